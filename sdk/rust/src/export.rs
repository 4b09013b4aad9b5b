//! [`export_rule!`](crate::export_rule): turns a rule crate into a Wasm rule module.

/// Exports a rule from a crate built for `wasm32-unknown-unknown` (crate-type `cdylib`).
///
/// ```
/// use sluice_sdk::{Config, Rule};
///
/// struct Passes;
/// impl Rule for Passes {}
///
/// fn init(_config: &Config) -> Result<Box<dyn Rule>, String> {
///     Ok(Box::new(Passes))
/// }
///
/// sluice_sdk::export_rule!(init, [authenticate, route]);
/// ```
///
/// * `init` is the rule's [`InitFn`](crate::InitFn) — `fn(&Config) -> Result<Box<dyn Rule>,
///   String>` — the same constructor a native build links as `builtin:NAME`. The generated
///   `sluice_init` export runs it on the config the host offers and keeps the rule for the
///   hooks (a second init replaces it); an `Err(reason)` refuses the load with that reason.
/// * The list names the hooks the rule implements, among `authenticate`, `route`,
///   `authorize`, `uplink` and `downlink`; only those are exported (a hook left out is never
///   called, so it costs nothing and the chain goes on to the next rule).
///
/// The module also exports `memory` and the ABI marker `sluice_abi_v1`, and imports only
/// `sluice1.*`. On other targets the macro only checks its arguments, so it may stay
/// unconditional in a crate that also builds natively. An unknown hook name fails to compile
/// with the list of valid names:
///
/// ```compile_fail
/// # use sluice_sdk::{Config, Rule};
/// # fn init(_config: &Config) -> Result<Box<dyn Rule>, String> { Err(String::new()) }
/// sluice_sdk::export_rule!(init, [rout]); // `rout` is not a hook; list only authenticate, route, …
/// ```
///
/// A crate used as a library by another rule must not export a second rule into it: put the
/// macro behind a default cargo feature (as `rules/senml` does with `export`).
#[macro_export]
macro_rules! export_rule {
    (@check authenticate) => {};
    (@check route) => {};
    (@check authorize) => {};
    (@check uplink) => {};
    (@check downlink) => {};
    (@check $other:ident) => {
        ::core::compile_error!(::core::concat!(
            "export_rule!: `", ::core::stringify!($other), "` is not a hook; ",
            "list only authenticate, route, authorize, uplink or downlink, e.g. export_rule!(init, [route, uplink])"
        ));
    };
    (@export $name:ident $hook:ident) => {
        #[allow(unsafe_code)] // exporting a symbol; the body is safe
        #[unsafe(no_mangle)]
        pub extern "C" fn $name() -> i32 {
            $crate::guest::wasm::export_hook($crate::guest::$hook)
        }
    };
    (@export authenticate) => { $crate::export_rule!(@export sluice_authenticate authenticate); };
    (@export route) => { $crate::export_rule!(@export sluice_route route); };
    (@export authorize) => { $crate::export_rule!(@export sluice_authorize authorize); };
    (@export uplink) => { $crate::export_rule!(@export sluice_uplink uplink); };
    (@export downlink) => { $crate::export_rule!(@export sluice_downlink downlink); };
    ($init:expr, [$($hook:ident),* $(,)?] $(,)?) => {
        const _: $crate::InitFn = $init;
        $( $crate::export_rule!(@check $hook); )*
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[allow(unsafe_code)] // exporting a symbol; the body is empty
            #[unsafe(no_mangle)]
            pub extern "C" fn sluice_abi_v1() {}

            #[allow(unsafe_code)] // exporting a symbol; the body is safe
            #[unsafe(no_mangle)]
            pub extern "C" fn sluice_init() -> i32 {
                $crate::guest::wasm::export_init($init)
            }

            $( $crate::export_rule!(@export $hook); )*
        };
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "usage: sluice_sdk::export_rule!(init, [hook, ...]) with init: fn(&Config) -> Result<Box<dyn Rule>, String> \
             and hooks among authenticate, route, authorize, uplink, downlink"
        );
    };
}
