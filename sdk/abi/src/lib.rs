//! # sluice-abi: the guest↔host contract of Sluice rules, as constants
//!
//! The Wasm ABI (import module `sluice1`, field ids, verdict codes) is specified here as the
//! single source of truth. This release carries the version markers; the field table arrives
//! with the Wasm runtime.

/// The ABI major version; the import module name is `sluice{ABI_MAJOR}`.
pub const ABI_MAJOR: u32 = 1;
/// The import module name guest rules link against.
pub const IMPORT_MODULE: &str = "sluice1";
