//! Logging from a rule: `sluice_sdk::log::info!("…")`, like `format!`.
//!
//! In a Wasm build each message goes to the gateway's log through the `log` import, tagged
//! with the rule's name and version and rate-limited by the host. In a native build (unit
//! tests, `builtin:` rules) it is printed to stderr. Never log a secret: rule logs are read by
//! whoever operates the gateway.
//!
//! ```
//! sluice_sdk::log::warn!("unknown token prefix {:?}", "ab");
//! ```

/// How important a message is (the ABI's numbering: 0 error … 4 trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// The rule cannot do its job.
    Error = 0,
    /// Something is off, the rule carries on.
    Warn = 1,
    /// Worth knowing in normal operation.
    Info = 2,
    /// Detail for finding a problem.
    Debug = 3,
    /// Everything.
    Trace = 4,
}

/// Writes one message at `level`.
pub fn write(level: Level, msg: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::guest::wasm::log(level, msg);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[rule {level:?}] {msg}");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_trace {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Debug`].
pub use __sluice_log_debug as debug;
/// Logs at [`Level::Error`]: `error!("config refused: {reason}")`.
pub use __sluice_log_error as error;
/// Logs at [`Level::Info`].
pub use __sluice_log_info as info;
/// Logs at [`Level::Trace`].
pub use __sluice_log_trace as trace;
/// Logs at [`Level::Warn`].
pub use __sluice_log_warn as warn;
