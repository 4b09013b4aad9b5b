// ABI v1: the names and numbers the guest and the host agree on.
//
// This file mirrors `sdk/abi/src/lib.rs` (the crate `sluice-abi`), which is the single source of
// truth: when a number changes there it changes here, and numbers are append-only. Rule authors do
// not need this file; `index.ts` wraps it in a typed API. A rule that wants a field the API does
// not surface yet imports it directly: `import * as abi from "@sluice/sdk/assembly/abi"`.
// host/tests/assemblyscript.rs checks that every number here equals the crate's.

/** The ABI major version. */
export const ABI_MAJOR: u32 = 1;
/** The import module name guest rules link against; it carries the major version. */
export const IMPORT_MODULE = "sluice1";
/** The export that marks a module as a Sluice rule of this ABI major version. */
export const EXPORT_MARKER = "sluice_abi_v1";

/**
 * Imports allowed from module `env` besides the ABI, so that plain AssemblyScript output links:
 * `abort(msg, file, line, col)`, `trace(msg, n, a0..a4)`, `seed() -> f64`, `Date.now() -> f64`.
 * (The SDK's own abort handler, `sluiceAbort` in `log.ts`, logs through `sluice1.log` instead of
 * `env.abort`; the template's asconfig.json selects it.)
 */
export const ENV_IMPORTS: StaticArray<string> = ["abort", "trace", "seed", "Date.now"];

/** Returned by `get`/`config` for an absent field. */
export const ABSENT: i32 = -1;
/** Returned by `get` for a field not readable in this hook. */
export const UNAVAILABLE: i32 = -2;
/** Returned by `get_i64` for an absent or unreadable field. */
export const ABSENT_I64: i64 = i64.MIN_VALUE;

// ---- Host functions (module `sluice1`) ---------------------------------------------------------

/**
 * `get(field, index, dst, cap) -> i32`: copies up to `cap` bytes of a byte field to `dst` and
 * returns its **full** length (`cap = 0` asks for the length only); `ABSENT` or `UNAVAILABLE`.
 */
// @ts-ignore: decorator
@external("sluice1", "get")
export declare function get(field: i32, index: i32, dst: usize, cap: i32): i32;

/** `get_i64(field, index) -> i64`: a numeric field; `ABSENT_I64` when absent or unreadable. */
// @ts-ignore: decorator
@external("sluice1", "get_i64")
export declare function get_i64(field: i32, index: i32): i64;

/** `set(field, src, len) -> i32`: sets an output (appends for repeated outputs); 0 or a `status`. */
// @ts-ignore: decorator
@external("sluice1", "set")
export declare function set(field: i32, src: usize, len: i32): i32;

/** `set_i64(field, value) -> i32`: sets a numeric output; 0 or a negative `status`. */
// @ts-ignore: decorator
@external("sluice1", "set_i64")
export declare function set_i64(field: i32, value: i64): i32;

/** `config(key, key_len, dst, cap) -> i32`: one config value by dotted key, as `get`. */
// @ts-ignore: decorator
@external("sluice1", "config")
export declare function config(key: usize, keyLen: i32, dst: usize, cap: i32): i32;

/** `log(level, msg, len)`: logs a UTF-8 message (0 error … 4 trace), rate-limited by the host. */
// @ts-ignore: decorator
@external("sluice1", "log")
export declare function log(level: i32, msg: usize, len: i32): void;

/**
 * `inputs(dst, cap) -> i32`: every field the running hook may read (not `CONFIG_ENTRY`, not
 * `NOW_MS`) in one block, written to `dst` only when it fits; returns the block's length (call
 * again with that much room when it exceeds `cap`), `UNAVAILABLE` outside a hook. The block is
 * a sequence of records: three little-endian i32 (field, index, length), then that many bytes
 * (a numeric field's value as 8 little-endian bytes). One crossing for all of a hook's inputs.
 */
// @ts-ignore: decorator
@external("sluice1", "inputs")
export declare function inputs(dst: usize, cap: i32): i32;

/** The encoding of `inputs` (sdk/abi/src/lib.rs, `block`). */
export namespace block {
  /** The length of a record's header: field, index and length, little-endian i32 each. */
  export const HEADER: usize = 12;
}

// ---- Results of `set` / `set_i64` --------------------------------------------------------------

export namespace status {
  /** Done. */
  export const OK: i32 = 0;
  /** Not a field this hook may write. */
  export const NOT_WRITABLE: i32 = -2;
  /** Larger than the host accepts. */
  export const TOO_LARGE: i32 = -3;
  /** Not valid for the field: not UTF-8 where text is required, a QoS above 2, … */
  export const INVALID: i32 = -4;
  /** No such field. */
  export const UNKNOWN_FIELD: i32 = -5;
}

// ---- Hook exports and their verdicts -----------------------------------------------------------

export namespace hook {
  export const INIT = "sluice_init";
  export const AUTHENTICATE = "sluice_authenticate";
  export const ROUTE = "sluice_route";
  export const AUTHORIZE = "sluice_authorize";
  export const UPLINK = "sluice_uplink";
  export const DOWNLINK = "sluice_downlink";

  /** authenticate: no opinion. */
  export const AUTH_CONTINUE: i32 = 0;
  /** authenticate: allow as the principal in the outputs. */
  export const AUTH_ALLOW: i32 = 1;
  /** authenticate: allow if the gateway's session for `OUT_CLIENT_ID` has `OUT_TOKEN`. */
  export const AUTH_SESSION: i32 = 2;
  /** authenticate: refuse. */
  export const AUTH_DENY: i32 = 3;

  export const ROUTE_CONTINUE: i32 = 0;
  export const ROUTE_PUBLISH: i32 = 1;
  export const ROUTE_SET_VALUE: i32 = 2;
  export const ROUTE_SUBSCRIBE: i32 = 3;
  export const ROUTE_UNSUBSCRIBE: i32 = 4;
  export const ROUTE_READ: i32 = 5;
  export const ROUTE_OBSERVE_VALUE: i32 = 6;
  export const ROUTE_DELETE: i32 = 7;
  export const ROUTE_CONNECT: i32 = 8;
  export const ROUTE_HEARTBEAT: i32 = 9;
  export const ROUTE_DISCONNECT: i32 = 10;
  export const ROUTE_RESPOND: i32 = 11;
  export const ROUTE_REJECT: i32 = 12;

  export const AUTHZ_CONTINUE: i32 = 0;
  export const AUTHZ_ALLOW: i32 = 1;
  export const AUTHZ_DENY: i32 = 2;

  export const TRANSFORM_CONTINUE: i32 = 0;
  export const TRANSFORM_REPLACE: i32 = 1;
  export const TRANSFORM_DROP: i32 = 2;
  export const TRANSFORM_REJECT: i32 = 3;
}

// ---- Field numbers: inputs below 100, outputs from 100; append-only ----------------------------

export namespace field {
  /** i64: CoAP method code detail (1 GET, 2 POST, 3 PUT, 4 DELETE, 5 FETCH, 6 PATCH, 7 iPATCH). */
  export const METHOD: i32 = 1;
  /** i64: 0 CON, 1 NON. */
  export const MESSAGE_TYPE: i32 = 2;
  /** bytes [index]: a Uri-Path segment, percent-decoded. */
  export const PATH_SEGMENT: i32 = 3;
  /** bytes [index]: a Uri-Query entry as sent (`key=value`). */
  export const QUERY: i32 = 4;
  /** i64: the Content-Format option (request; uplink). */
  export const CONTENT_FORMAT: i32 = 5;
  /** i64: the Accept option. */
  export const ACCEPT: i32 = 6;
  /** i64: the Observe option. */
  export const OBSERVE: i32 = 7;
  /** i64: the Max-Age option. */
  export const MAX_AGE: i32 = 8;
  /** bytes: the device's address, `ip:port`. */
  export const PEER: i32 = 9;
  /** bytes: the payload (the request's in authenticate/route/uplink; the MQTT message's in downlink). */
  export const PAYLOAD: i32 = 10;

  /** bytes: the DTLS PSK identity. */
  export const PSK_IDENTITY: i32 = 20;
  /** bytes: the client certificate's subject CN. */
  export const CERT_SUBJECT: i32 = 21;
  /** bytes [index]: the client certificate's SANs. */
  export const CERT_SAN: i32 = 22;
  /** bytes: SHA-256 of the client certificate, lowercase hex. */
  export const CERT_FINGERPRINT: i32 = 23;

  /** bytes: the principal's client id (route, authorize, uplink, downlink). */
  export const CLIENT_ID: i32 = 30;
  /** bytes: the principal's user name. */
  export const USERNAME: i32 = 31;
  /** bytes [index]: the principal's attributes, `key\0value`. */
  export const ATTRIBUTE: i32 = 32;

  /** i64: authorize: 0 publish, 1 subscribe. */
  export const ACCESS: i32 = 40;
  /** bytes: authorize, uplink, downlink: the MQTT topic (or filter). */
  export const TOPIC: i32 = 41;
  /** bytes: downlink: the MQTT v5 content type. */
  export const CONTENT_TYPE: i32 = 42;
  /** bytes [index]: downlink: MQTT v5 user properties, `key\0value`. */
  export const USER_PROPERTY: i32 = 43;

  /** bytes [index]: every config entry, `dotted.key\0value` (readable in every hook). */
  export const CONFIG_ENTRY: i32 = 50;
  /** i64: milliseconds since the Unix epoch, frozen for the call. */
  export const NOW_MS: i32 = 51;

  /** authenticate: the client id. */
  export const OUT_CLIENT_ID: i32 = 100;
  /** authenticate: the user name. */
  export const OUT_USERNAME: i32 = 101;
  /** authenticate: an attribute, `key\0value` (append). */
  export const OUT_ATTRIBUTE: i32 = 102;
  /** authenticate: the session token. */
  export const OUT_TOKEN: i32 = 103;
  /** route: the topic or filter. */
  export const OUT_TOPIC: i32 = 104;
  /** route: i64 QoS 0..=2 (absent: the gateway's default). */
  export const OUT_QOS: i32 = 105;
  /** route: i64 retain flag 0/1. */
  export const OUT_RETAIN: i32 = 106;
  /** route: i64 message expiry, seconds. */
  export const OUT_EXPIRY: i32 = 107;
  /** route: an MQTT v5 user property, `key\0value` (append). */
  export const OUT_USER_PROPERTY: i32 = 108;
  /** authenticate, route, uplink: i64 CoAP code byte (class << 5 | detail). */
  export const OUT_CODE: i32 = 109;
  /** init, authenticate, route, uplink: the reason (a diagnostic; never a secret). */
  export const OUT_REASON: i32 = 110;
  /** route (respond), uplink, downlink: the new payload. */
  export const OUT_PAYLOAD: i32 = 111;
  /** route (respond), uplink, downlink: i64 Content-Format. */
  export const OUT_CONTENT_FORMAT: i32 = 112;
}

// ---- Custom sections of a rule package ---------------------------------------------------------

export namespace section {
  /** JSON manifest: name, version, ABI version, hooks, config schema, limits. */
  export const MANIFEST = "sluice.manifest";
  /** JSON test vectors run by `sluice rule test` and before every hot swap. */
  export const VECTORS = "sluice.vectors";
}
