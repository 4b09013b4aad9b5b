//! # sluice-sdk: what a Sluice rule author imports
//!
//! A rule decides what the gateway does with a CoAP request: who the device is
//! ([`Rule::authenticate`]), which action a URL means ([`Rule::route`]), whether the device may
//! do it ([`Rule::authorize`]) and what the payload becomes on the way up ([`Rule::uplink`]) and
//! down ([`Rule::downlink`]). Every hook may answer "continue", which passes the decision to the
//! next rule in the chain; the gateway's defaults apply when every rule passes.
//!
//! The same rule source is used two ways: linked natively into the gateway (the `builtin:`
//! rules) and compiled to `wasm32-unknown-unknown` as a rule package. That is why the types here
//! are plain data with no host handles: the Wasm backend ([`guest`]) fills the same structs from
//! host imports (see the `sluice-abi` crate) before it calls the same trait methods, and
//! [`export_rule!`] generates the module's exports. `README.md` beside this crate is the guide:
//! how to write, build, test and ship a rule.
//!
//! ```
//! use sluice_sdk::*;
//!
//! struct Prefix;
//! impl Rule for Prefix {
//!     fn route(&self, req: &Request, who: &Principal) -> Route {
//!         match req.path.first().map(String::as_str) {
//!             Some("t") => Route::Publish(Publish::to(format!("devices/{}/{}", who.client_id, req.path[1..].join("/")))),
//!             _ => Route::Continue,
//!         }
//!     }
//! }
//!
//! /// The constructor: reads the config or refuses to load with a reason.
//! pub fn init(_config: &Config) -> Result<Box<dyn Rule>, String> {
//!     Ok(Box::new(Prefix))
//! }
//!
//! // On wasm32: the module's exports (`sluice_init`, `sluice_route`); natively: a type check.
//! sluice_sdk::export_rule!(init, [route]);
//! ```
//!
//! Modules: [`guest`] is the Wasm backend (the ABI encodings), [`log`] the rule's logging,
//! [`topic`] MQTT topic checks, [`content_format`] the CoAP Content-Format numbers.

use std::fmt;

pub use sluice_abi as abi;

mod export;
pub mod guest;
pub mod log;
pub mod topic;

/// A CoAP request method (RFC 7252 §12.1.1, RFC 8132).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// 0.01 GET
    #[default]
    Get,
    /// 0.02 POST
    Post,
    /// 0.03 PUT
    Put,
    /// 0.04 DELETE
    Delete,
    /// 0.05 FETCH
    Fetch,
    /// 0.06 PATCH
    Patch,
    /// 0.07 iPATCH
    IPatch,
}

impl Method {
    /// The method's code detail (0.0X).
    pub fn code(self) -> u8 {
        match self {
            Method::Get => 1,
            Method::Post => 2,
            Method::Put => 3,
            Method::Delete => 4,
            Method::Fetch => 5,
            Method::Patch => 6,
            Method::IPatch => 7,
        }
    }

    /// The method for a code detail, if it is one.
    pub fn from_code(code: u8) -> Option<Method> {
        Some(match code {
            1 => Method::Get,
            2 => Method::Post,
            3 => Method::Put,
            4 => Method::Delete,
            5 => Method::Fetch,
            6 => Method::Patch,
            7 => Method::IPatch,
            _ => return None,
        })
    }
}

/// Whether the request came as a Confirmable or a Non-confirmable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageType {
    /// CON: the device waits for an acknowledgement.
    #[default]
    Confirmable,
    /// NON: fire and forget.
    NonConfirmable,
}

/// What the transport proved about the device (DTLS). Empty over plain UDP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The DTLS PSK identity the device used.
    pub psk_identity: Option<String>,
    /// The client certificate's subject common name.
    pub cert_subject: Option<String>,
    /// The client certificate's subject alternative names.
    pub cert_sans: Vec<String>,
    /// SHA-256 of the client certificate (DER), lowercase hex.
    pub cert_fingerprint: Option<String>,
}

impl Identity {
    /// True when the transport authenticated the device (PSK or certificate).
    pub fn is_authenticated(&self) -> bool {
        self.psk_identity.is_some() || self.cert_subject.is_some() || self.cert_fingerprint.is_some()
    }
}

/// A complete CoAP request (block-wise bodies already reassembled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// CON or NON.
    pub message_type: MessageType,
    /// Uri-Path segments, percent-decoded (`/mqtt/a%2Fb` gives `["mqtt", "a/b"]`).
    pub path: Vec<String>,
    /// Uri-Query entries as sent, `key=value` or `key`.
    pub query: Vec<String>,
    /// The Content-Format option.
    pub content_format: Option<u16>,
    /// The Accept option.
    pub accept: Option<u16>,
    /// The Observe option: 0 registers, 1 deregisters.
    pub observe: Option<u32>,
    /// The Max-Age option, in seconds.
    pub max_age: Option<u32>,
    /// The device's address, `ip:port`.
    pub peer: String,
    /// What DTLS proved about the device.
    pub identity: Identity,
    /// The body.
    pub payload: Vec<u8>,
}

impl Request {
    /// The value of the first query entry whose key is one of `keys` (`c=dev1` gives `dev1`).
    /// A value may itself contain `=`; a bare `key` gives an empty value.
    pub fn query_value(&self, keys: &[&str]) -> Option<&str> {
        self.query.iter().find_map(|entry| {
            let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            keys.contains(&key).then_some(value)
        })
    }

    /// The Uri-Path joined with `/`, without a leading slash.
    pub fn path_string(&self) -> String {
        self.path.join("/")
    }
}

/// A CoAP response code, `class.detail`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u8);

impl Code {
    /// Build from class and detail: `Code::new(4, 3)` is 4.03.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code((class << 5) | detail)
    }
    /// The class digit (2, 4 or 5).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }
    /// The detail digits.
    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }
    /// 2.01 Created
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content
    pub const CONTENT: Code = Code::new(2, 5);
    /// 4.00 Bad Request
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.06 Not Acceptable
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    /// 4.13 Request Entity Too Large
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.15 Unsupported Content-Format
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    /// 5.00 Internal Server Error
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.02 Bad Gateway
    pub const BAD_GATEWAY: Code = Code::new(5, 2);
    /// 5.03 Service Unavailable
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.04 Gateway Timeout
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A refusal: the CoAP code and a diagnostic that tells the device's owner the fix.
/// The reason goes into the response payload (RFC 7252 §5.5.2), so it must never contain a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The response code (4.xx or 5.xx).
    pub code: Code,
    /// A short diagnostic, for example `unknown user: check u= and p=`.
    pub reason: String,
}

impl Reject {
    /// A refusal with `code` and `reason`.
    pub fn new(code: Code, reason: impl Into<String>) -> Reject {
        Reject { code, reason: reason.into() }
    }
}

/// Who the device is, once authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The client id; MQTT topics and ACLs refer to it as `${clientid}`.
    pub client_id: String,
    /// The user name, if any (`${username}`).
    pub username: Option<String>,
    /// Extra attributes later hooks may read (for example a tenant).
    pub attributes: Vec<(String, String)>,
}

impl Principal {
    /// A principal with only a client id.
    pub fn new(client_id: impl Into<String>) -> Principal {
        Principal { client_id: client_id.into(), ..Principal::default() }
    }

    /// The value of an attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The verdict of [`Rule::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No opinion: the next rule decides.
    Continue,
    /// The device is who it says.
    Allow(Principal),
    /// Connection mode (EMQX 5): allow if the gateway holds a session for `client_id` whose
    /// token is `token`; otherwise the gateway answers 4.01. Sessions and tokens live in the
    /// gateway, not in the rule, so that they survive rule reloads.
    Session {
        /// The client id the device claims.
        client_id: String,
        /// The token the gateway gave it at connect.
        token: String,
    },
    /// Refuse (normally 4.01; 4.00 for a malformed request such as a missing client id).
    Deny(Reject),
}

/// A publish to MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// The MQTT topic (no wildcards).
    pub topic: String,
    /// QoS 0, 1 or 2; `None` takes the gateway's `publish_qos` setting.
    pub qos: Option<u8>,
    /// The MQTT retain flag.
    pub retain: bool,
    /// MQTT v5 Message Expiry Interval, in seconds.
    pub expiry: Option<u32>,
    /// MQTT v5 user properties.
    pub user_properties: Vec<(String, String)>,
}

impl Publish {
    /// A publish to `topic` with the gateway's defaults.
    pub fn to(topic: impl Into<String>) -> Publish {
        Publish { topic: topic.into(), ..Publish::default() }
    }
}

/// The action of a request: the verdict of [`Rule::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No opinion: the next rule decides; 4.04 when no rule routes.
    Continue,
    /// Publish, answer 2.04 Changed.
    Publish(Publish),
    /// Publish as the topic's value (retained, expiring after `expiry`, default the request's
    /// Max-Age or 60 s); answer 2.01 Created with Location-Path when the topic had no value,
    /// else 2.04 Changed.
    SetValue(Publish),
    /// Observe: subscribe to `filter` (wildcards allowed) and notify the device; 2.05.
    Subscribe {
        /// The MQTT topic filter.
        filter: String,
        /// QoS; `None` takes the gateway's `subscribe_qos` setting.
        qos: Option<u8>,
    },
    /// End the observation of `filter`; 2.05.
    Unsubscribe {
        /// The MQTT topic filter.
        filter: String,
    },
    /// Read the topic's value: 2.05 with payload, Content-Format and remaining Max-Age; 4.04 if
    /// none or expired.
    Read {
        /// The MQTT topic.
        topic: String,
    },
    /// Observe a topic's value: like `Subscribe`, but the current value (if any) comes in the
    /// registration response.
    ObserveValue {
        /// The MQTT topic (no wildcards).
        topic: String,
        /// QoS; `None` takes the gateway's `subscribe_qos` setting.
        qos: Option<u8>,
    },
    /// Clear the topic's value: 2.02 Deleted, 4.04 if it had none.
    Delete {
        /// The MQTT topic.
        topic: String,
    },
    /// Connection mode: open a session for the principal; 2.01 with the token as payload.
    Connect,
    /// Connection mode: keep the session alive; 2.04.
    Heartbeat,
    /// Connection mode: close the session; 2.02.
    Disconnect,
    /// Answer directly, with no MQTT action (a keep-alive GET, for instance).
    Respond {
        /// The response code.
        code: Code,
        /// The body.
        payload: Vec<u8>,
        /// The Content-Format of the body.
        content_format: Option<u16>,
    },
    /// Refuse the request.
    Reject(Reject),
}

/// What [`Rule::authorize`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Publishing to a topic (also `SetValue` and `Delete`).
    Publish,
    /// Subscribing to a filter (also `Read`).
    Subscribe,
}

/// The verdict of [`Rule::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authz {
    /// No opinion: the next rule decides; allowed when every rule passes.
    Continue,
    /// Permitted.
    Allow,
    /// Not permitted: the gateway answers 4.03.
    Deny,
}

/// A message on its way up (CoAP → MQTT), given to [`Rule::uplink`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uplink {
    /// The MQTT topic chosen by `route`.
    pub topic: String,
    /// The CoAP payload.
    pub payload: Vec<u8>,
    /// The request's Content-Format.
    pub content_format: Option<u16>,
}

/// A message on its way down (MQTT → CoAP notification), given to [`Rule::downlink`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Downlink {
    /// The MQTT topic it was published to.
    pub topic: String,
    /// The MQTT payload.
    pub payload: Vec<u8>,
    /// The MQTT v5 content type, if set.
    pub content_type: Option<String>,
    /// The MQTT v5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// The verdict of a payload hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    /// Keep the payload as it is.
    Continue,
    /// Replace the payload (and optionally its format: a CoAP Content-Format number, which
    /// becomes the MQTT v5 content type on the way up).
    Replace {
        /// The new payload.
        payload: Vec<u8>,
        /// The new Content-Format, if it changes.
        content_format: Option<u16>,
    },
    /// Do not deliver (answer 2.04 upward, send no notification downward).
    Drop,
    /// Refuse (upward only): answer with this code.
    Reject(Reject),
}

/// The read-only configuration of a rule, as written under the rule's `config:` key in the
/// gateway config (a YAML mapping, flattened to dotted keys: `users.0.name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A config from dotted keys and scalar values.
    pub fn from_entries(entries: Vec<(String, String)>) -> Config {
        Config { entries }
    }

    /// The value of a dotted key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every entry, in the order written.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The number of items of the list at `key` (`users` has items `users.0.…`, `users.1.…`).
    pub fn list_len(&self, key: &str) -> usize {
        let prefix = format!("{key}.");
        self.entries
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix)?.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// A boolean key: `true`/`false`; `default` when absent; an error naming the key otherwise.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(format!("{key}: expected true or false, found {other:?}")),
        }
    }
}

/// A rule. Implement the hooks you need; the others pass.
pub trait Rule: Send + Sync {
    /// Who is the device? Runs first, for every request.
    fn authenticate(&self, req: &Request) -> Auth {
        let _ = req;
        Auth::Continue
    }

    /// Which action does the request mean?
    fn route(&self, req: &Request, who: &Principal) -> Route {
        let _ = (req, who);
        Route::Continue
    }

    /// May `who` do `access` on `topic`?
    fn authorize(&self, who: &Principal, access: Access, topic: &str) -> Authz {
        let _ = (who, access, topic);
        Authz::Continue
    }

    /// What does the payload become on the way up?
    fn uplink(&self, msg: &Uplink, who: &Principal) -> Transform {
        let _ = (msg, who);
        Transform::Continue
    }

    /// What does the payload become on the way down to an observer?
    fn downlink(&self, msg: &Downlink, who: &Principal) -> Transform {
        let _ = (msg, who);
        Transform::Continue
    }
}

/// Milliseconds since the Unix epoch. In a Wasm rule this is the gateway's clock, read once and
/// frozen for the hook call (ABI field `NOW_MS`; a Wasm rule has no clock of its own); natively
/// it is the system clock.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        guest::wasm::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A rule's constructor: reads its config, or refuses to load with a reason that names the key
/// and the fix.
pub type InitFn = fn(&Config) -> Result<Box<dyn Rule>, String>;

/// CoAP Content-Format numbers (IANA registry) used by rules and the gateway.
pub mod content_format {
    /// text/plain;charset=utf-8
    pub const TEXT_PLAIN: u16 = 0;
    /// application/link-format
    pub const LINK_FORMAT: u16 = 40;
    /// application/xml
    pub const XML: u16 = 41;
    /// application/octet-stream
    pub const OCTET_STREAM: u16 = 42;
    /// application/exi
    pub const EXI: u16 = 47;
    /// application/json
    pub const JSON: u16 = 50;
    /// application/cbor
    pub const CBOR: u16 = 60;
    /// application/senml+json
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor
    pub const SENML_CBOR: u16 = 112;

    const TABLE: &[(u16, &str)] = &[
        (TEXT_PLAIN, "text/plain;charset=utf-8"),
        (LINK_FORMAT, "application/link-format"),
        (XML, "application/xml"),
        (OCTET_STREAM, "application/octet-stream"),
        (EXI, "application/exi"),
        (JSON, "application/json"),
        (CBOR, "application/cbor"),
        (SENML_JSON, "application/senml+json"),
        (SENML_CBOR, "application/senml+cbor"),
    ];

    /// The MIME type for a Content-Format; unregistered numbers become `application/coap-cf;cf=N`
    /// so that they survive the round trip through MQTT.
    pub fn to_mime(cf: u16) -> String {
        TABLE
            .iter()
            .find(|(n, _)| *n == cf)
            .map(|(_, m)| (*m).to_string())
            .unwrap_or_else(|| format!("application/coap-cf;cf={cf}"))
    }

    /// The Content-Format for a MIME type, if it has one.
    pub fn from_mime(mime: &str) -> Option<u16> {
        let mime = mime.trim();
        if let Some(n) = mime.strip_prefix("application/coap-cf;cf=") {
            return n.parse().ok();
        }
        if mime.eq_ignore_ascii_case("text/plain") {
            return Some(TEXT_PLAIN);
        }
        TABLE.iter().find(|(_, m)| m.eq_ignore_ascii_case(mime)).map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_value_takes_the_first_matching_key_and_keeps_equals_signs() {
        let req = Request {
            query: vec!["c=dev1".into(), "p=abc==".into(), "flag".into(), "c=other".into()],
            ..Request::default()
        };
        assert_eq!(req.query_value(&["c", "clientid"]), Some("dev1"));
        assert_eq!(req.query_value(&["p"]), Some("abc=="));
        assert_eq!(req.query_value(&["flag"]), Some(""));
        assert_eq!(req.query_value(&["u"]), None);
    }

    #[test]
    fn code_prints_as_class_dot_detail() {
        assert_eq!(Code::FORBIDDEN.to_string(), "4.03");
        assert_eq!(Code::new(2, 31).to_string(), "2.31");
        assert_eq!(Code::CONTENT.0, 69);
    }

    #[test]
    fn config_counts_list_items() {
        let cfg = Config::from_entries(vec![
            ("users.0.name".into(), "a".into()),
            ("users.1.name".into(), "b".into()),
            ("anonymous".into(), "true".into()),
        ]);
        assert_eq!(cfg.list_len("users"), 2);
        assert_eq!(cfg.list_len("acl"), 0);
        assert_eq!(cfg.bool_or("anonymous", false), Ok(true));
        assert!(cfg.bool_or("users.0.name", false).is_err());
    }

    #[test]
    fn now_is_after_2020_natively() {
        assert!(now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn content_formats_round_trip_through_mime() {
        for cf in [0, 42, 50, 60, 112, 11542] {
            assert_eq!(content_format::from_mime(&content_format::to_mime(cf)), Some(cf));
        }
    }
}
