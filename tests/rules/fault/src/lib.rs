//! # sluice-rule-fault: a rule that misbehaves on demand
//!
//! The runtime's containment tests (`host/tests/rust_rules.rs`) load this rule as
//! `fault.wasm` and make it fail in every way a rule can; the gateway must answer each with
//! the hook's fail policy and keep serving. The first path segment picks the behaviour of
//! `route`:
//!
//! | path | route does |
//! |---|---|
//! | `/ok/{x}` | publishes to `ok/{x}` |
//! | `/trap` | panics: a Wasm trap (`panic = "abort"`) |
//! | `/loop` | never returns: the call deadline stops it |
//! | `/memory` | allocates 1 MiB chunks until memory runs out: the memory cap stops it |
//! | `/oob` | calls the raw `sluice1.get` import with a pointer past the end of memory |
//! | `/bigout` | publishes to a 1 MiB topic: the host refuses the output |
//! | `/badtopic` | publishes to `a/+/b`: a wildcard in a publish topic, refused by the host |
//! | `/now` | publishes to `now/{sluice_sdk::now_ms()}` |
//! | `/log` | logs one message at each level (the `log` import), then publishes to `log/done` |
//! | anything else | continue |
//!
//! The other hooks, so that a test can reach every hook and every fail policy:
//!
//! | hook | does |
//! |---|---|
//! | `authenticate` | path `/authtrap` traps; `/whoami` allows client id `c=`, username `u=` (if given) and attribute `peer`; else continue |
//! | `authorize` | topic `trap` traps; `allow/…` allows; `deny/…` denies; else continue |
//! | `uplink` | payload `trap` traps; else continue |
//! | `downlink` | payload `trap` traps; else replaces the payload with a description of what it saw (Content-Format 0) |
//!
//! Natively the `trap`, `loop` and `memory` cases are real (a panic, a hang, an allocation
//! failure): only call them in Wasm.

use sluice_sdk::{Access, Auth, Authz, Config, Downlink, Principal, Publish, Request, Route, Rule, Transform, Uplink};

/// The rule's name.
pub const NAME: &str = "fault";

struct Fault;

impl Rule for Fault {
    fn authenticate(&self, req: &Request) -> Auth {
        match req.path.first().map(String::as_str) {
            Some("authtrap") => panic!("fault: authenticate trap requested"),
            Some("whoami") => Auth::Allow(Principal {
                client_id: req.query_value(&["c"]).unwrap_or_default().to_string(),
                username: req.query_value(&["u"]).map(String::from),
                attributes: vec![("peer".into(), req.peer.clone())],
            }),
            _ => Auth::Continue,
        }
    }

    fn authorize(&self, _who: &Principal, _access: Access, topic: &str) -> Authz {
        match topic.split('/').next() {
            Some("trap") => panic!("fault: authorize trap requested"),
            Some("allow") => Authz::Allow,
            Some("deny") => Authz::Deny,
            _ => Authz::Continue,
        }
    }

    fn downlink(&self, msg: &Downlink, who: &Principal) -> Transform {
        if msg.payload == b"trap" {
            panic!("fault: downlink trap requested");
        }
        let seen = format!(
            "{} {} {:?} {:?} {} {:?}",
            msg.topic,
            String::from_utf8_lossy(&msg.payload),
            msg.content_type,
            msg.user_properties,
            who.client_id,
            who.attributes
        );
        Transform::Replace { payload: seen.into_bytes(), content_format: Some(0) }
    }

    fn route(&self, req: &Request, _who: &Principal) -> Route {
        match req.path.first().map(String::as_str) {
            Some("ok") => Route::Publish(Publish::to(format!("ok/{}", req.path.get(1).map_or("", String::as_str)))),
            Some("trap") => panic!("fault: trap requested"),
            Some("loop") => spin(),
            Some("memory") => bomb(),
            Some("oob") => Route::Publish(Publish::to(format!("oob/{}", raw::out_of_bounds_get()))),
            Some("bigout") => Route::Publish(Publish::to("x".repeat(1 << 20))),
            Some("badtopic") => Route::Publish(Publish::to("a/+/b")),
            Some("now") => Route::Publish(Publish::to(format!("now/{}", sluice_sdk::now_ms()))),
            Some("log") => {
                sluice_sdk::log::error!("fault: error level");
                sluice_sdk::log::warn!("fault: warn level");
                sluice_sdk::log::info!("fault: info level, peer {}", req.peer);
                sluice_sdk::log::debug!("fault: debug level");
                sluice_sdk::log::trace!("fault: trace level");
                Route::Publish(Publish::to("log/done"))
            }
            _ => Route::Continue,
        }
    }

    fn uplink(&self, msg: &Uplink, _who: &Principal) -> Transform {
        if msg.payload == b"trap" {
            panic!("fault: uplink trap requested");
        }
        Transform::Continue
    }
}

/// Loops forever without being optimised away.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks forever, touching each so that it is really used.
fn bomb() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(std::hint::black_box(vec![1u8; 1 << 20]));
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the point of the `oob` case: a raw import call with a bad pointer
mod raw {
    #[link(wasm_import_module = "sluice1")]
    unsafe extern "C" {
        #[link_name = "get"]
        fn sluice1_get(field: i32, index: i32, dst: i32, cap: i32) -> i32;
    }

    /// `get(PATH_SEGMENT, 0, 0xFFFF_FFF0, 64)`: the host must trap, not write.
    pub fn out_of_bounds_get() -> i32 {
        // SAFETY: none intended; the host bounds-checks the range and traps before writing.
        unsafe { sluice1_get(sluice_sdk::abi::field::PATH_SEGMENT, 0, 0xFFFF_FFF0_u32 as i32, 64) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod raw {
    /// Natively there is no guest memory to miss: the case is a Wasm test only.
    pub fn out_of_bounds_get() -> i32 {
        sluice_sdk::abi::ABSENT
    }
}

/// Builds the rule (it takes no config).
pub fn init(_config: &Config) -> Result<Box<dyn Rule>, String> {
    Ok(Box::new(Fault))
}

#[cfg(not(any(feature = "abi-v2", feature = "no-init")))]
sluice_sdk::export_rule!(init, [authenticate, route, authorize, uplink, downlink]);

/// Builds the gateway must refuse (see Cargo.toml's features); they exist only as Wasm.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // exporting symbols and declaring a foreign import is what these builds are for
mod broken {
    /// A rule built for wasm32-wasip1 habits: it writes to stdout through WASI.
    #[cfg(feature = "wasi-import")]
    mod wasi {
        #[link(wasm_import_module = "wasi_snapshot_preview1")]
        unsafe extern "C" {
            fn fd_write(fd: i32, iovs: i32, iovs_len: i32, written: i32) -> i32;
        }

        /// Keeps the import alive.
        #[unsafe(no_mangle)]
        pub extern "C" fn fault_write() -> i32 {
            // SAFETY: never called; the module is refused before it runs.
            unsafe { fd_write(1, 0, 0, 0) }
        }
    }

    /// A rule built against a future SDK: the v2 marker.
    #[cfg(feature = "abi-v2")]
    mod abi_v2 {
        /// The marker of ABI v2.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_abi_v2() {}

        /// An init that accepts any config.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_init() -> i32 {
            0
        }

        /// A route hook that continues.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_route() -> i32 {
            0
        }
    }

    /// A rule whose init export was left out.
    #[cfg(feature = "no-init")]
    mod no_init {
        /// The marker of ABI v1.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_abi_v1() {}

        /// A route hook that continues.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_route() -> i32 {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        let req = Request { path: path.split('/').map(String::from).collect(), ..Request::default() };
        Fault.route(&req, &Principal::default())
    }

    #[test]
    fn the_harmless_cases_answer_natively() {
        assert_eq!(route("ok/7"), Route::Publish(Publish::to("ok/7")));
        assert_eq!(route("badtopic"), Route::Publish(Publish::to("a/+/b")));
        assert_eq!(route("other"), Route::Continue);
        assert_eq!(Fault.uplink(&Uplink::default(), &Principal::default()), Transform::Continue);
    }
}
