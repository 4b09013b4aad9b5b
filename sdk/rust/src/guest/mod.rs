//! The guest side of ABI v1: how the SDK's types travel over the `sluice1` fields.
//!
//! A rule author never calls this module: [`export_rule!`](crate::export_rule) generates the
//! Wasm exports, and each export reads its inputs into the ordinary SDK types ([`read`]), calls
//! the same [`Rule`] method a native build calls, and writes the verdict back ([`write`](mod@write)), with
//! the encodings of the plan's contract B (the host decodes them into the same values).
//!
//! Everything here is written against [`Fields`], the four data imports, so that the encodings
//! are unit-tested natively with an in-memory host; only the `wasm` backend (compiled for
//! `target_arch = "wasm32"`) touches the real imports and holds the rule instance.

pub mod read;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
pub mod write;

use crate::{Authz, InitFn, Rule};
use sluice_abi::{field, hook};

/// The data imports of module `sluice1`, as seen by the guest (`config` and `log` are not
/// data: the SDK reads config entries with `get`, and logs through [`crate::log`]).
pub trait Fields {
    /// `get`: copies up to `dst.len()` bytes of `field[index]` into `dst` and returns the full
    /// length, or [`sluice_abi::ABSENT`] / [`sluice_abi::UNAVAILABLE`].
    fn get(&mut self, field: i32, index: i32, dst: &mut [u8]) -> i32;
    /// `get_i64`: a numeric field, or [`sluice_abi::ABSENT_I64`].
    fn get_i64(&mut self, field: i32, index: i32) -> i64;
    /// `set`: sets (or appends) a byte output; 0 or a negative [`sluice_abi::status`].
    fn set(&mut self, field: i32, value: &[u8]) -> i32;
    /// `set_i64`: sets a numeric output; 0 or a negative [`sluice_abi::status`].
    fn set_i64(&mut self, field: i32, value: i64) -> i32;
    /// `inputs`: copies the hook's whole input block into `dst` when it fits and returns its
    /// length, or [`sluice_abi::UNAVAILABLE`] outside a hook.
    fn inputs(&mut self, dst: &mut [u8]) -> i32;
}

/// Runs `init` on the config the host offers. `Err` carries the export's return value: the
/// refusal's reason is already written to `OUT_REASON`.
pub fn init(host: &mut impl Fields, init: InitFn) -> Result<Box<dyn Rule>, i32> {
    let config = read::config(host);
    init(&config).map_err(|reason| {
        let status = host.set(field::OUT_REASON, reason.as_bytes());
        if status < 0 { status } else { 1 }
    })
}

/// The `sluice_authenticate` export: reads the request, returns the written verdict.
pub fn authenticate(host: &mut impl Fields, rule: &dyn Rule) -> i32 {
    let req = read::with_inputs(host, read::request);
    write::auth(host, &rule.authenticate(&req))
}

/// The `sluice_route` export.
pub fn route(host: &mut impl Fields, rule: &dyn Rule) -> i32 {
    let (req, who) = read::with_inputs(host, |inputs| (read::request(inputs), read::principal(inputs)));
    write::route(host, &rule.route(&req, &who))
}

/// The `sluice_authorize` export. An access other than 0 or 1 is the host's error: the rule
/// answers `-1` and the fail policy (deny) applies.
pub fn authorize(host: &mut impl Fields, rule: &dyn Rule) -> i32 {
    let ((access, topic), who) = read::with_inputs(host, |inputs| (read::access(inputs), read::principal(inputs)));
    let Some(access) = access else { return -1 };
    match rule.authorize(&who, access, &topic) {
        Authz::Continue => hook::AUTHZ_CONTINUE,
        Authz::Allow => hook::AUTHZ_ALLOW,
        Authz::Deny => hook::AUTHZ_DENY,
    }
}

/// The `sluice_uplink` export.
pub fn uplink(host: &mut impl Fields, rule: &dyn Rule) -> i32 {
    let (msg, who) = read::with_inputs(host, |inputs| (read::uplink(inputs), read::principal(inputs)));
    write::transform(host, &rule.uplink(&msg, &who))
}

/// The `sluice_downlink` export.
pub fn downlink(host: &mut impl Fields, rule: &dyn Rule) -> i32 {
    let (msg, who) = read::with_inputs(host, |inputs| (read::downlink(inputs), read::principal(inputs)));
    write::transform(host, &rule.downlink(&msg, &who))
}

#[cfg(test)]
pub(crate) mod mock;
