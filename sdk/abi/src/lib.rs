//! # sluice-abi: the guest↔host contract of Sluice rules (ABI v1)
//!
//! A rule is a core WebAssembly module. This crate is the single source of truth for the names
//! and numbers both sides agree on; `README.md` beside it explains them in prose, and the
//! AssemblyScript SDK mirrors them (`sdk/assemblyscript/assembly/abi.ts`).
//!
//! ## Shape
//! * The guest **exports** `memory`, the marker [`EXPORT_MARKER`] (never called), and any
//!   subset of the hook functions in [`hook`] (named by [`Hook`]): `() -> i32`, returning a
//!   verdict.
//! * The guest **imports** from module [`IMPORT_MODULE`] ([`import`]): it *pulls* the inputs it
//!   needs (`get`, `get_i64`) into buffers it owns and *pushes* its outputs (`set`,
//!   `set_i64`), which the host copies. The host never allocates inside guest memory, so the
//!   ABI works the same for Rust, AssemblyScript (any runtime) and anything else that compiles
//!   to a core module.
//! * Fields are numbered ([`field`]); numbers are append-only. A repeated field is indexed
//!   (`index` 0, 1, …; `-1` past the end). Pairs (attributes, user properties, config entries)
//!   are `key\0value`.
//! * A negative verdict, a trap, a timeout or a bad pointer is the rule's failure: the host
//!   applies the hook's fail policy (authenticate → deny 4.01, route → 5.00, authorize → deny,
//!   uplink → drop and answer 5.00, downlink → drop).

#![no_std]

/// The ABI major version.
pub const ABI_MAJOR: u32 = 1;
/// The import module name guest rules link against; it carries the major version.
pub const IMPORT_MODULE: &str = "sluice1";
/// The export that marks a module as a Sluice rule of this ABI major version.
pub const EXPORT_MARKER: &str = "sluice_abi_v1";

/// Host functions in module `sluice1`.
pub mod import {
    /// `get(field: i32, index: i32, dst: i32, cap: i32) -> i32`: copies up to `cap` bytes of
    /// a byte field into guest memory at `dst` and returns its **full** length (`cap = 0` asks
    /// for the length only); [`super::ABSENT`] when absent, [`super::UNAVAILABLE`] when not
    /// readable in this hook. An out-of-bounds `dst..dst+cap` traps.
    pub const GET: &str = "get";
    /// `get_i64(field: i32, index: i32) -> i64`: a numeric field; [`super::ABSENT_I64`] when
    /// absent or not readable in this hook.
    pub const GET_I64: &str = "get_i64";
    /// `set(field: i32, src: i32, len: i32) -> i32`: sets an output (append for repeated
    /// outputs); 0, or a negative [`super::status`]. An out-of-bounds range traps.
    pub const SET: &str = "set";
    /// `set_i64(field: i32, value: i64) -> i32`: sets a numeric output; 0 or a negative status.
    pub const SET_I64: &str = "set_i64";
    /// `config(key: i32, key_len: i32, dst: i32, cap: i32) -> i32`: the rule's config value
    /// for a dotted key, as `get`. (Enumerate every entry with [`super::field::CONFIG_ENTRY`].)
    pub const CONFIG: &str = "config";
    /// `log(level: i32, msg: i32, len: i32)`: logs a UTF-8 message (0 error … 4 trace),
    /// tagged with the rule and version, rate-limited by the host.
    pub const LOG: &str = "log";
    /// `inputs(dst: i32, cap: i32) -> i32`: every input field the running hook may read, in
    /// one [`block`](super::block), so that a hook needs one crossing for all its inputs
    /// instead of one per field. Returns the block's length; the block is written to `dst`
    /// only when it fits (`len <= cap`), so a guest never sees half a block: when the result
    /// exceeds `cap`, it calls again with a buffer of that length. [`super::UNAVAILABLE`]
    /// outside a hook. The block holds neither `CONFIG_ENTRY` nor `NOW_MS` (read those with
    /// `get` / `get_i64` / `config`). An out-of-bounds `dst..dst+cap` traps.
    ///
    /// Added within ABI v1: a module that imports it needs a gateway that offers it (Sluice
    /// 0.1.0 and later), and modules that do not keep working unchanged.
    pub const INPUTS: &str = "inputs";
}

/// The encoding of [`import::INPUTS`]: a sequence of records, each a 12-byte header of three
/// little-endian `i32` — `field`, `index`, `len` — followed by `len` bytes of data. A numeric
/// field's data is its value as 8 little-endian bytes; a byte field's data is its bytes (pairs
/// as `key\0value`, as `get` gives them). A repeated field's entries come in index order. A
/// record that does not fit in what remains ends the block (a reader stops there).
pub mod block {
    /// The length of a record's header.
    pub const HEADER: usize = 12;

    /// The header of a record of `len` bytes of `field[index]`.
    pub fn header(field: i32, index: i32, len: i32) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        let (f, rest) = out.split_at_mut(4);
        let (i, l) = rest.split_at_mut(4);
        f.copy_from_slice(&field.to_le_bytes());
        i.copy_from_slice(&index.to_le_bytes());
        l.copy_from_slice(&len.to_le_bytes());
        out
    }

    /// One record: `(field, index, data)`.
    pub type Record<'a> = (i32, i32, &'a [u8]);

    /// The records of `block`, in order.
    pub fn records(block: &[u8]) -> Records<'_> {
        Records { rest: block }
    }

    /// A numeric record's value (`None` when its data is not 8 bytes).
    pub fn int(data: &[u8]) -> Option<i64> {
        <[u8; 8]>::try_from(data).ok().map(i64::from_le_bytes)
    }

    /// The iterator of [`records`].
    #[derive(Clone, Debug)]
    pub struct Records<'a> {
        rest: &'a [u8],
    }

    fn le(bytes: &[u8]) -> i32 {
        <[u8; 4]>::try_from(bytes).map_or(0, i32::from_le_bytes)
    }

    impl<'a> Iterator for Records<'a> {
        type Item = Record<'a>;

        fn next(&mut self) -> Option<Record<'a>> {
            let (head, body) = self.rest.split_at_checked(HEADER)?;
            let (field, index, len) = (le(&head[0..4]), le(&head[4..8]), le(&head[8..12]));
            let Some((data, rest)) = usize::try_from(len).ok().and_then(|n| body.split_at_checked(n)) else {
                self.rest = &[];
                return None;
            };
            self.rest = rest;
            Some((field, index, data))
        }
    }
}

/// Imports allowed from module `env` besides the ABI, so that plain AssemblyScript output links:
/// `abort(msg, file, line, col)` (logs and traps), `trace(msg, n, a0..a4)` (logs), `seed() ->
/// f64`, `Date.now() -> f64`. Any other import refuses the module.
pub const ENV_IMPORTS: &[&str] = &["abort", "trace", "seed", "Date.now"];

/// Returned by `get`/`config` for an absent field.
pub const ABSENT: i32 = -1;
/// Returned by `get` for a field not readable in this hook.
pub const UNAVAILABLE: i32 = -2;
/// Returned by `get_i64` for an absent or unreadable field.
pub const ABSENT_I64: i64 = i64::MIN;

/// Results of `set` / `set_i64`.
pub mod status {
    /// Done.
    pub const OK: i32 = 0;
    /// Not a field this hook may write.
    pub const NOT_WRITABLE: i32 = -2;
    /// Larger than the host accepts (see the limits in the manifest).
    pub const TOO_LARGE: i32 = -3;
    /// Not valid for the field: not UTF-8 where text is required, a QoS above 2, …
    pub const INVALID: i32 = -4;
    /// No such field.
    pub const UNKNOWN_FIELD: i32 = -5;
}

/// Hook exports, their verdicts, and their fail policies.
pub mod hook {
    /// `sluice_init() -> i32`: once per instance, config readable. 0 accepts; anything else
    /// refuses to load, with the reason from `OUT_REASON`.
    pub const INIT: &str = "sluice_init";
    /// `sluice_authenticate() -> i32`: [`AUTH_CONTINUE`], [`AUTH_ALLOW`] (`OUT_CLIENT_ID`,
    /// optional `OUT_USERNAME`, `OUT_ATTR`…), [`AUTH_SESSION`] (`OUT_CLIENT_ID`, `OUT_TOKEN`),
    /// [`AUTH_DENY`] (`OUT_CODE` default 4.01, `OUT_REASON`).
    pub const AUTHENTICATE: &str = "sluice_authenticate";
    /// `sluice_route() -> i32`: one of the `ROUTE_*` verdicts, with its outputs.
    pub const ROUTE: &str = "sluice_route";
    /// `sluice_authorize() -> i32`: [`AUTHZ_CONTINUE`], [`AUTHZ_ALLOW`], [`AUTHZ_DENY`];
    /// inputs `ACCESS`, `TOPIC` and the principal.
    pub const AUTHORIZE: &str = "sluice_authorize";
    /// `sluice_uplink() -> i32`: one of the `TRANSFORM_*` verdicts; inputs `TOPIC`,
    /// `PAYLOAD`, `CONTENT_FORMAT` and the principal.
    pub const UPLINK: &str = "sluice_uplink";
    /// `sluice_downlink() -> i32`: one of the `TRANSFORM_*` verdicts (reject counts as drop);
    /// inputs `TOPIC`, `PAYLOAD`, `CONTENT_TYPE`, `USER_PROP`… and the principal.
    pub const DOWNLINK: &str = "sluice_downlink";
    /// Every hook export, in chain order (see [`super::Hook`] for each hook's name).
    pub const ALL: &[&str] = &[INIT, AUTHENTICATE, ROUTE, AUTHORIZE, UPLINK, DOWNLINK];

    /// authenticate: no opinion.
    pub const AUTH_CONTINUE: i32 = 0;
    /// authenticate: allow as the principal in the outputs.
    pub const AUTH_ALLOW: i32 = 1;
    /// authenticate: allow if the gateway's session for `OUT_CLIENT_ID` has `OUT_TOKEN`.
    pub const AUTH_SESSION: i32 = 2;
    /// authenticate: refuse.
    pub const AUTH_DENY: i32 = 3;

    /// route: no opinion (4.04 when no rule routes).
    pub const ROUTE_CONTINUE: i32 = 0;
    /// route: publish (`OUT_TOPIC`, `OUT_QOS`?, `OUT_RETAIN`?, `OUT_EXPIRY`?, `OUT_USER_PROP`…).
    pub const ROUTE_PUBLISH: i32 = 1;
    /// route: publish as the topic's value (outputs as publish).
    pub const ROUTE_SET_VALUE: i32 = 2;
    /// route: observe a filter (`OUT_TOPIC`, `OUT_QOS`?).
    pub const ROUTE_SUBSCRIBE: i32 = 3;
    /// route: end an observation (`OUT_TOPIC`).
    pub const ROUTE_UNSUBSCRIBE: i32 = 4;
    /// route: read a topic's value (`OUT_TOPIC`).
    pub const ROUTE_READ: i32 = 5;
    /// route: observe a topic's value (`OUT_TOPIC`, `OUT_QOS`?).
    pub const ROUTE_OBSERVE_VALUE: i32 = 6;
    /// route: clear a topic's value (`OUT_TOPIC`).
    pub const ROUTE_DELETE: i32 = 7;
    /// route: connection mode, open a session.
    pub const ROUTE_CONNECT: i32 = 8;
    /// route: connection mode, heartbeat.
    pub const ROUTE_HEARTBEAT: i32 = 9;
    /// route: connection mode, close.
    pub const ROUTE_DISCONNECT: i32 = 10;
    /// route: answer directly (`OUT_CODE`, `OUT_PAYLOAD`?, `OUT_CONTENT_FORMAT`?).
    pub const ROUTE_RESPOND: i32 = 11;
    /// route: refuse (`OUT_CODE`, `OUT_REASON`).
    pub const ROUTE_REJECT: i32 = 12;

    /// authorize: no opinion (allowed when every rule passes).
    pub const AUTHZ_CONTINUE: i32 = 0;
    /// authorize: permitted.
    pub const AUTHZ_ALLOW: i32 = 1;
    /// authorize: not permitted (4.03).
    pub const AUTHZ_DENY: i32 = 2;

    /// uplink/downlink: keep the payload.
    pub const TRANSFORM_CONTINUE: i32 = 0;
    /// uplink/downlink: replace it (`OUT_PAYLOAD`, `OUT_CONTENT_FORMAT`?).
    pub const TRANSFORM_REPLACE: i32 = 1;
    /// uplink/downlink: do not deliver.
    pub const TRANSFORM_DROP: i32 = 2;
    /// uplink: refuse with `OUT_CODE`, `OUT_REASON`.
    pub const TRANSFORM_REJECT: i32 = 3;
}

/// A hook of ABI v1: the one place its name (in manifests, test vectors and logs) and its
/// export ([`hook`]) are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `init`: [`hook::INIT`].
    Init,
    /// `authenticate`: [`hook::AUTHENTICATE`].
    Authenticate,
    /// `route`: [`hook::ROUTE`].
    Route,
    /// `authorize`: [`hook::AUTHORIZE`].
    Authorize,
    /// `uplink`: [`hook::UPLINK`].
    Uplink,
    /// `downlink`: [`hook::DOWNLINK`].
    Downlink,
}

impl Hook {
    /// Every hook, in chain order (the order of [`hook::ALL`]).
    pub const ALL: [Hook; 6] =
        [Hook::Init, Hook::Authenticate, Hook::Route, Hook::Authorize, Hook::Uplink, Hook::Downlink];

    /// The hooks a chain runs for requests and messages, in order: every hook but `init`
    /// (what a manifest's `hooks` and a test vector's `hook` may name).
    pub const fn chain() -> [Hook; 5] {
        [Hook::Authenticate, Hook::Route, Hook::Authorize, Hook::Uplink, Hook::Downlink]
    }

    /// The hook's name in manifests, vectors and logs: `route`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Authenticate => "authenticate",
            Hook::Route => "route",
            Hook::Authorize => "authorize",
            Hook::Uplink => "uplink",
            Hook::Downlink => "downlink",
        }
    }

    /// The hook's export: `sluice_route`.
    pub const fn export(self) -> &'static str {
        match self {
            Hook::Init => hook::INIT,
            Hook::Authenticate => hook::AUTHENTICATE,
            Hook::Route => hook::ROUTE,
            Hook::Authorize => hook::AUTHORIZE,
            Hook::Uplink => hook::UPLINK,
            Hook::Downlink => hook::DOWNLINK,
        }
    }

    /// The hook named `name` (`route`), if any.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The hook's position in [`Hook::ALL`] (for per-hook tables).
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Field numbers. Inputs below 100, outputs from 100. Append-only.
pub mod field {
    /// i64: CoAP method code detail (1 GET, 2 POST, 3 PUT, 4 DELETE, 5 FETCH, 6 PATCH, 7 iPATCH).
    pub const METHOD: i32 = 1;
    /// i64: 0 CON, 1 NON.
    pub const MESSAGE_TYPE: i32 = 2;
    /// bytes [index]: a Uri-Path segment, percent-decoded.
    pub const PATH_SEGMENT: i32 = 3;
    /// bytes [index]: a Uri-Query entry as sent (`key=value`).
    pub const QUERY: i32 = 4;
    /// i64: the Content-Format option (request; uplink).
    pub const CONTENT_FORMAT: i32 = 5;
    /// i64: the Accept option.
    pub const ACCEPT: i32 = 6;
    /// i64: the Observe option.
    pub const OBSERVE: i32 = 7;
    /// i64: the Max-Age option.
    pub const MAX_AGE: i32 = 8;
    /// bytes: the device's address, `ip:port`.
    pub const PEER: i32 = 9;
    /// bytes: the payload (the request's in authenticate/route/uplink; the MQTT message's in
    /// downlink).
    pub const PAYLOAD: i32 = 10;

    /// bytes: the DTLS PSK identity.
    pub const PSK_IDENTITY: i32 = 20;
    /// bytes: the client certificate's subject CN.
    pub const CERT_SUBJECT: i32 = 21;
    /// bytes [index]: the client certificate's SANs.
    pub const CERT_SAN: i32 = 22;
    /// bytes: SHA-256 of the client certificate, lowercase hex.
    pub const CERT_FINGERPRINT: i32 = 23;

    /// bytes: the principal's client id (route, authorize, uplink, downlink).
    pub const CLIENT_ID: i32 = 30;
    /// bytes: the principal's user name.
    pub const USERNAME: i32 = 31;
    /// bytes [index]: the principal's attributes, `key\0value`.
    pub const ATTRIBUTE: i32 = 32;

    /// i64: authorize: 0 publish, 1 subscribe.
    pub const ACCESS: i32 = 40;
    /// bytes: authorize, uplink, downlink: the MQTT topic (or filter).
    pub const TOPIC: i32 = 41;
    /// bytes: downlink: the MQTT v5 content type.
    pub const CONTENT_TYPE: i32 = 42;
    /// bytes [index]: downlink: MQTT v5 user properties, `key\0value`.
    pub const USER_PROPERTY: i32 = 43;

    /// bytes [index]: every config entry, `dotted.key\0value` (readable in every hook).
    pub const CONFIG_ENTRY: i32 = 50;
    /// i64: milliseconds since the Unix epoch, frozen for the call.
    pub const NOW_MS: i32 = 51;

    /// authenticate: the client id.
    pub const OUT_CLIENT_ID: i32 = 100;
    /// authenticate: the user name.
    pub const OUT_USERNAME: i32 = 101;
    /// authenticate: an attribute, `key\0value` (append).
    pub const OUT_ATTRIBUTE: i32 = 102;
    /// authenticate: the session token.
    pub const OUT_TOKEN: i32 = 103;
    /// route: the topic or filter.
    pub const OUT_TOPIC: i32 = 104;
    /// route: i64 QoS 0..=2 (absent: the gateway's default).
    pub const OUT_QOS: i32 = 105;
    /// route: i64 retain flag 0/1.
    pub const OUT_RETAIN: i32 = 106;
    /// route: i64 message expiry, seconds.
    pub const OUT_EXPIRY: i32 = 107;
    /// route: an MQTT v5 user property, `key\0value` (append).
    pub const OUT_USER_PROPERTY: i32 = 108;
    /// authenticate, route, uplink: i64 CoAP code byte (class << 5 | detail).
    pub const OUT_CODE: i32 = 109;
    /// init, authenticate, route, uplink: the reason (a diagnostic; never a secret).
    pub const OUT_REASON: i32 = 110;
    /// route (respond), uplink, downlink: the new payload.
    pub const OUT_PAYLOAD: i32 = 111;
    /// route (respond), uplink, downlink: i64 Content-Format.
    pub const OUT_CONTENT_FORMAT: i32 = 112;
}

/// Custom sections of a rule package (a `.wasm` file that is also its own package).
pub mod section {
    /// JSON manifest: name, version, ABI version, hooks, config schema, limits.
    pub const MANIFEST: &str = "sluice.manifest";
    /// JSON test vectors run by `sluice rule test` and before every hot swap.
    pub const VECTORS: &str = "sluice.vectors";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hook_pairs_its_name_with_its_export() {
        assert_eq!(Hook::ALL.len(), hook::ALL.len());
        for (hook, export) in Hook::ALL.into_iter().zip(hook::ALL) {
            assert_eq!(hook.export(), *export);
            assert_eq!(export.strip_prefix("sluice_"), Some(hook.name()));
            assert_eq!(Hook::from_name(hook.name()), Some(hook));
            assert_eq!(Hook::ALL.get(hook.index()), Some(&hook));
        }
        assert_eq!(Hook::chain(), Hook::ALL[1..]);
        assert_eq!(Hook::from_name("sluice_route"), None);
    }

    #[test]
    fn a_block_reads_back_its_records_and_stops_at_a_truncated_one() {
        let mut buf = [0u8; 64];
        let mut at = 0;
        for (field, index, data) in [(3, 0, &b"ab"[..]), (3, 1, b""), (1, 0, &7i64.to_le_bytes())] {
            let len = i32::try_from(data.len()).unwrap_or(0);
            buf[at..at + block::HEADER].copy_from_slice(&block::header(field, index, len));
            at += block::HEADER;
            buf[at..at + data.len()].copy_from_slice(data);
            at += data.len();
        }
        let mut records = block::records(&buf[..at]);
        assert_eq!(records.next(), Some((3, 0, &b"ab"[..])));
        assert_eq!(records.next(), Some((3, 1, &b""[..])));
        let (field, _, data) = records.next().unwrap_or_default();
        assert_eq!((field, block::int(data)), (1, Some(7)));
        assert_eq!(records.next(), None);
        // The last record claims more bytes than remain: the block ends before it.
        assert_eq!(block::records(&buf[..at - 1]).count(), 2);
    }
}
