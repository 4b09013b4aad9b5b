//! An in-memory host for testing the encodings natively: it serves inputs encoded from SDK
//! values the way the gateway does, records every output, and decodes a verdict back into SDK
//! values the way the gateway does (contract B). A round trip through it must be the identity.

use std::collections::BTreeMap;

use super::{Fields, read, write};
use crate::{Access, Auth, Code, Downlink, Principal, Publish, Reject, Request, Route, Rule, Transform, Uplink};
use sluice_abi::{ABSENT, ABSENT_I64, field, hook, status};

/// One recorded output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A byte output.
    Bytes(Vec<u8>),
    /// A numeric output.
    Int(i64),
}

/// The in-memory host.
#[derive(Debug, Default)]
pub struct Mock {
    bytes: BTreeMap<(i32, i32), Vec<u8>>,
    ints: BTreeMap<i32, i64>,
    /// Every output, in the order set.
    pub outputs: Vec<(i32, Out)>,
    /// Outputs refused with this status (field, status), to test refusals.
    pub refuse: Option<(i32, i32)>,
    /// Every `get` call's capacity, to check the two-step read of long fields.
    pub get_caps: Vec<usize>,
    /// Every `inputs` call's capacity, to check the second fetch of a long block.
    pub inputs_caps: Vec<usize>,
}

impl Fields for Mock {
    fn get(&mut self, field: i32, index: i32, dst: &mut [u8]) -> i32 {
        self.get_caps.push(dst.len());
        match self.bytes.get(&(field, index)) {
            Some(value) => {
                let n = value.len().min(dst.len());
                dst[..n].copy_from_slice(&value[..n]);
                i32::try_from(value.len()).unwrap_or(i32::MAX)
            }
            None => ABSENT,
        }
    }

    fn get_i64(&mut self, field: i32, _index: i32) -> i64 {
        self.ints.get(&field).copied().unwrap_or(ABSENT_I64)
    }

    fn inputs(&mut self, dst: &mut [u8]) -> i32 {
        self.inputs_caps.push(dst.len());
        // Fields in number order, a repeated field's entries in index order: as the gateway.
        let mut records: Vec<(i32, i32, Vec<u8>)> = Vec::new();
        for (&(f, i), value) in &self.bytes {
            if f != field::CONFIG_ENTRY {
                records.push((f, i, value.clone()));
            }
        }
        for (&f, v) in &self.ints {
            records.push((f, 0, v.to_le_bytes().to_vec()));
        }
        records.sort_by_key(|(f, i, _)| (*f, *i));
        let mut block = Vec::new();
        for (f, i, data) in records {
            block.extend_from_slice(&sluice_abi::block::header(f, i, i32::try_from(data.len()).unwrap_or(i32::MAX)));
            block.extend_from_slice(&data);
        }
        if let Some(to) = dst.get_mut(..block.len()) {
            to.copy_from_slice(&block);
        }
        i32::try_from(block.len()).unwrap_or(i32::MAX)
    }

    fn set(&mut self, field: i32, value: &[u8]) -> i32 {
        if let Some((f, s)) = self.refuse
            && f == field
        {
            return s;
        }
        self.outputs.push((field, Out::Bytes(value.to_vec())));
        status::OK
    }

    fn set_i64(&mut self, field: i32, value: i64) -> i32 {
        if let Some((f, s)) = self.refuse
            && f == field
        {
            return s;
        }
        self.outputs.push((field, Out::Int(value)));
        status::OK
    }
}

impl Mock {
    fn put(&mut self, field: i32, value: impl AsRef<[u8]>) {
        self.put_at(field, 0, value);
    }

    fn put_at(&mut self, field: i32, index: i32, value: impl AsRef<[u8]>) {
        self.bytes.insert((field, index), value.as_ref().to_vec());
    }

    fn put_list<S: AsRef<[u8]>>(&mut self, field: i32, values: &[S]) {
        for (i, v) in values.iter().enumerate() {
            self.put_at(field, i32::try_from(i).unwrap_or(i32::MAX), v);
        }
    }

    fn put_pairs(&mut self, field: i32, pairs: &[(String, String)]) {
        let entries: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}\0{v}")).collect();
        self.put_list(field, &entries);
    }

    fn put_int(&mut self, field: i32, value: Option<i64>) {
        if let Some(v) = value {
            self.ints.insert(field, v);
        }
    }

    /// A host serving `req` (authenticate, route).
    pub fn with_request(mut self, req: &Request) -> Mock {
        self.put_int(field::METHOD, Some(i64::from(req.method.code())));
        self.put_int(field::MESSAGE_TYPE, Some(i64::from(req.message_type == crate::MessageType::NonConfirmable)));
        self.put_list(field::PATH_SEGMENT, &req.path);
        self.put_list(field::QUERY, &req.query);
        self.put_int(field::CONTENT_FORMAT, req.content_format.map(i64::from));
        self.put_int(field::ACCEPT, req.accept.map(i64::from));
        self.put_int(field::OBSERVE, req.observe.map(i64::from));
        self.put_int(field::MAX_AGE, req.max_age.map(i64::from));
        self.put(field::PEER, &req.peer);
        self.put(field::PAYLOAD, &req.payload);
        if let Some(v) = &req.identity.psk_identity {
            self.put(field::PSK_IDENTITY, v);
        }
        if let Some(v) = &req.identity.cert_subject {
            self.put(field::CERT_SUBJECT, v);
        }
        self.put_list(field::CERT_SAN, &req.identity.cert_sans);
        if let Some(v) = &req.identity.cert_fingerprint {
            self.put(field::CERT_FINGERPRINT, v);
        }
        self
    }

    /// A host serving `who` (route, authorize, uplink, downlink).
    pub fn with_principal(mut self, who: &Principal) -> Mock {
        self.put(field::CLIENT_ID, &who.client_id);
        if let Some(name) = &who.username {
            self.put(field::USERNAME, name);
        }
        self.put_pairs(field::ATTRIBUTE, &who.attributes);
        self
    }

    /// A host serving the config entries.
    pub fn with_config(mut self, entries: &[(String, String)]) -> Mock {
        self.put_pairs(field::CONFIG_ENTRY, entries);
        self
    }

    /// A host serving an authorize question.
    pub fn with_access(mut self, access: Access, topic: &str) -> Mock {
        self.put_int(field::ACCESS, Some(i64::from(access == Access::Subscribe)));
        self.put(field::TOPIC, topic);
        self
    }

    /// A host serving an uplink message.
    pub fn with_uplink(mut self, msg: &Uplink) -> Mock {
        self.put(field::TOPIC, &msg.topic);
        self.put(field::PAYLOAD, &msg.payload);
        self.put_int(field::CONTENT_FORMAT, msg.content_format.map(i64::from));
        self
    }

    /// A host serving a downlink message.
    pub fn with_downlink(mut self, msg: &Downlink) -> Mock {
        self.put(field::TOPIC, &msg.topic);
        self.put(field::PAYLOAD, &msg.payload);
        if let Some(ct) = &msg.content_type {
            self.put(field::CONTENT_TYPE, ct);
        }
        self.put_pairs(field::USER_PROPERTY, &msg.user_properties);
        self
    }

    fn text(&self, field: i32) -> Option<String> {
        self.outputs.iter().find_map(|(f, v)| match v {
            Out::Bytes(b) if *f == field => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
    }

    fn bytes_out(&self, field: i32) -> Option<Vec<u8>> {
        self.outputs.iter().find_map(|(f, v)| match v {
            Out::Bytes(b) if *f == field => Some(b.clone()),
            _ => None,
        })
    }

    fn int(&self, field: i32) -> Option<i64> {
        self.outputs.iter().find_map(|(f, v)| match v {
            Out::Int(i) if *f == field => Some(*i),
            _ => None,
        })
    }

    fn pairs(&self, field: i32) -> Vec<(String, String)> {
        self.outputs
            .iter()
            .filter_map(|(f, v)| match v {
                Out::Bytes(b) if *f == field => {
                    let s = String::from_utf8_lossy(b);
                    let (k, v) = s.split_once('\0').unwrap_or((&s, ""));
                    Some((k.to_string(), v.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    fn reject(&self) -> Reject {
        let code = self.int(field::OUT_CODE).and_then(|c| u8::try_from(c).ok()).map_or(Code::UNAUTHORIZED, Code);
        Reject::new(code, self.text(field::OUT_REASON).unwrap_or_default())
    }

    fn publish(&self) -> Publish {
        Publish {
            topic: self.text(field::OUT_TOPIC).unwrap_or_default(),
            qos: self.int(field::OUT_QOS).and_then(|q| u8::try_from(q).ok()),
            retain: self.int(field::OUT_RETAIN) == Some(1),
            expiry: self.int(field::OUT_EXPIRY).and_then(|e| u32::try_from(e).ok()),
            user_properties: self.pairs(field::OUT_USER_PROPERTY),
        }
    }

    fn qos(&self) -> Option<u8> {
        self.int(field::OUT_QOS).and_then(|q| u8::try_from(q).ok())
    }

    fn content_format(&self) -> Option<u16> {
        self.int(field::OUT_CONTENT_FORMAT).and_then(|c| u16::try_from(c).ok())
    }

    /// Decodes an authenticate verdict the way the host does.
    pub fn decode_auth(&self, verdict: i32) -> Option<Auth> {
        Some(match verdict {
            hook::AUTH_CONTINUE => Auth::Continue,
            hook::AUTH_ALLOW => Auth::Allow(Principal {
                client_id: self.text(field::OUT_CLIENT_ID)?,
                username: self.text(field::OUT_USERNAME),
                attributes: self.pairs(field::OUT_ATTRIBUTE),
            }),
            hook::AUTH_SESSION => {
                Auth::Session { client_id: self.text(field::OUT_CLIENT_ID)?, token: self.text(field::OUT_TOKEN)? }
            }
            hook::AUTH_DENY => Auth::Deny(self.reject()),
            _ => return None,
        })
    }

    /// Decodes a route verdict the way the host does.
    pub fn decode_route(&self, verdict: i32) -> Option<Route> {
        let topic = || self.text(field::OUT_TOPIC);
        Some(match verdict {
            hook::ROUTE_CONTINUE => Route::Continue,
            hook::ROUTE_PUBLISH => Route::Publish(self.publish()),
            hook::ROUTE_SET_VALUE => Route::SetValue(self.publish()),
            hook::ROUTE_SUBSCRIBE => Route::Subscribe { filter: topic()?, qos: self.qos() },
            hook::ROUTE_UNSUBSCRIBE => Route::Unsubscribe { filter: topic()? },
            hook::ROUTE_READ => Route::Read { topic: topic()? },
            hook::ROUTE_OBSERVE_VALUE => Route::ObserveValue { topic: topic()?, qos: self.qos() },
            hook::ROUTE_DELETE => Route::Delete { topic: topic()? },
            hook::ROUTE_CONNECT => Route::Connect,
            hook::ROUTE_HEARTBEAT => Route::Heartbeat,
            hook::ROUTE_DISCONNECT => Route::Disconnect,
            hook::ROUTE_RESPOND => Route::Respond {
                code: Code(u8::try_from(self.int(field::OUT_CODE)?).ok()?),
                payload: self.bytes_out(field::OUT_PAYLOAD).unwrap_or_default(),
                content_format: self.content_format(),
            },
            hook::ROUTE_REJECT => Route::Reject(self.reject()),
            _ => return None,
        })
    }

    /// Decodes a transform verdict the way the host does.
    pub fn decode_transform(&self, verdict: i32) -> Option<Transform> {
        Some(match verdict {
            hook::TRANSFORM_CONTINUE => Transform::Continue,
            hook::TRANSFORM_REPLACE => Transform::Replace {
                payload: self.bytes_out(field::OUT_PAYLOAD)?,
                content_format: self.content_format(),
            },
            hook::TRANSFORM_DROP => Transform::Drop,
            hook::TRANSFORM_REJECT => Transform::Reject(self.reject()),
            _ => return None,
        })
    }
}

/// A rule that answers every hook with fixed verdicts and records what it was given.
pub struct Echo {
    /// authenticate's verdict.
    pub auth: Auth,
    /// route's verdict.
    pub route: Route,
    /// uplink's and downlink's verdict.
    pub transform: Transform,
    /// What the hooks saw, as `Debug` strings.
    pub seen: std::sync::Mutex<Vec<String>>,
}

impl Echo {
    fn saw(&self, what: String) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(what);
        }
    }
}

impl Rule for Echo {
    fn authenticate(&self, req: &Request) -> Auth {
        self.saw(format!("{req:?}"));
        self.auth.clone()
    }
    fn route(&self, req: &Request, who: &Principal) -> Route {
        self.saw(format!("{req:?} {who:?}"));
        self.route.clone()
    }
    fn authorize(&self, who: &Principal, access: Access, topic: &str) -> crate::Authz {
        self.saw(format!("{who:?} {access:?} {topic}"));
        match (access, topic) {
            (Access::Publish, "allowed") => crate::Authz::Allow,
            (_, "denied") => crate::Authz::Deny,
            _ => crate::Authz::Continue,
        }
    }
    fn uplink(&self, msg: &Uplink, who: &Principal) -> Transform {
        self.saw(format!("{msg:?} {who:?}"));
        self.transform.clone()
    }
    fn downlink(&self, msg: &Downlink, who: &Principal) -> Transform {
        self.saw(format!("{msg:?} {who:?}"));
        self.transform.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Authz, Config, Identity, MessageType, Method};

    fn full_request() -> Request {
        Request {
            method: Method::IPatch,
            message_type: MessageType::NonConfirmable,
            path: vec!["mqtt".into(), "a/b".into(), "ü".into(), String::new()],
            query: vec!["c=d".into(), "p=x==".into(), "flag".into()],
            content_format: Some(112),
            accept: Some(50),
            observe: Some(0),
            max_age: Some(4_000_000_000),
            peer: "[::1]:5683".into(),
            identity: Identity {
                psk_identity: Some("psk-1".into()),
                cert_subject: Some("gw-7".into()),
                cert_sans: vec!["a.example".into(), "b.example".into()],
                cert_fingerprint: Some("ab".repeat(32)),
            },
            payload: (0..=255).cycle().take(1000).collect(),
        }
    }

    fn principal() -> Principal {
        Principal {
            client_id: "dev1".into(),
            username: Some("tom".into()),
            attributes: vec![("tenant".into(), "acme".into()), ("empty".into(), String::new())],
        }
    }

    #[test]
    fn every_request_field_round_trips() {
        for req in [full_request(), Request::default()] {
            let mut host = Mock::default().with_request(&req);
            assert_eq!(read::with_inputs(&mut host, read::request), req);
            assert_eq!(host.inputs_caps.len(), 1, "one crossing for the whole request");
            assert!(host.get_caps.is_empty());
        }
    }

    #[test]
    fn a_long_field_is_read_in_two_calls() {
        let req = Request { payload: vec![7; 5000], ..Request::default() };
        let mut host = Mock::default().with_request(&req);
        assert_eq!(read::bytes(&mut host, field::PAYLOAD, 0), Some(vec![7; 5000]));
        assert_eq!(host.get_caps, vec![256, 5000]);
    }

    #[test]
    fn a_long_block_is_fetched_again_at_its_length_and_the_buffer_is_kept() {
        let req = Request { payload: vec![7; 9000], ..Request::default() };
        let mut host = Mock::default().with_request(&req);
        assert_eq!(read::with_inputs(&mut host, read::request), req);
        let (first, second) = (host.inputs_caps[0], host.inputs_caps[1]);
        assert!(first < 9000 && second > 9000, "{:?}", host.inputs_caps);
        // The next call starts with the grown buffer: one crossing.
        let mut host = Mock::default().with_request(&req);
        assert_eq!(read::with_inputs(&mut host, read::request), req);
        assert_eq!(host.inputs_caps, vec![second]);
    }

    #[test]
    fn principal_and_config_round_trip() {
        for who in [principal(), Principal::new("x"), Principal::default()] {
            let mut host = Mock::default().with_principal(&who);
            let got = read::with_inputs(&mut host, read::principal);
            assert_eq!(got, who);
        }
        let entries = vec![("devices.T1".to_string(), "dev-1".to_string()), ("a.0.b".into(), "x\0y".into())];
        let mut host = Mock::default().with_config(&entries);
        // Only the first NUL separates: a value may hold one (a key never does).
        assert_eq!(read::config(&mut host), Config::from_entries(entries));
    }

    #[test]
    fn uplink_and_downlink_inputs_round_trip() {
        let up = Uplink { topic: "t/1".into(), payload: vec![0xa1, 0, 0xff], content_format: Some(60) };
        assert_eq!(read::with_inputs(&mut Mock::default().with_uplink(&up), read::uplink), up);
        let up = Uplink::default();
        assert_eq!(read::with_inputs(&mut Mock::default().with_uplink(&up), read::uplink), up);
        let down = Downlink {
            topic: "cmd/dev1".into(),
            payload: b"{\"a\": 1}".to_vec(),
            content_type: Some("application/json".into()),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        };
        assert_eq!(read::with_inputs(&mut Mock::default().with_downlink(&down), read::downlink), down);
    }

    fn auths() -> Vec<Auth> {
        vec![
            Auth::Continue,
            Auth::Allow(principal()),
            Auth::Allow(Principal::new("anon")),
            Auth::Session { client_id: "d".into(), token: "123".into() },
            Auth::Deny(Reject::new(Code::UNAUTHORIZED, "bad username or password")),
            Auth::Deny(Reject::new(Code::BAD_REQUEST, "")),
        ]
    }

    fn routes() -> Vec<Route> {
        let full = Publish {
            topic: "a/b".into(),
            qos: Some(2),
            retain: true,
            expiry: Some(u32::MAX),
            user_properties: vec![("k".into(), "v".into())],
        };
        vec![
            Route::Continue,
            Route::Publish(full.clone()),
            Route::Publish(Publish::to("x")),
            Route::SetValue(full),
            Route::SetValue(Publish { qos: Some(0), expiry: Some(60), retain: true, ..Publish::to("t") }),
            Route::Subscribe { filter: "a/+/#".into(), qos: Some(1) },
            Route::Subscribe { filter: "a".into(), qos: None },
            Route::Unsubscribe { filter: "a/#".into() },
            Route::Read { topic: "r".into() },
            Route::ObserveValue { topic: "o".into(), qos: None },
            Route::ObserveValue { topic: "o".into(), qos: Some(2) },
            Route::Delete { topic: "d".into() },
            Route::Connect,
            Route::Heartbeat,
            Route::Disconnect,
            Route::Respond { code: Code::CONTENT, payload: Vec::new(), content_format: None },
            Route::Respond { code: Code::CREATED, payload: vec![0, 1, 2], content_format: Some(42) },
            Route::Reject(Reject::new(Code::METHOD_NOT_ALLOWED, "use PUT")),
        ]
    }

    fn transforms() -> Vec<Transform> {
        vec![
            Transform::Continue,
            Transform::Replace { payload: b"{}".to_vec(), content_format: Some(50) },
            Transform::Replace { payload: Vec::new(), content_format: None },
            Transform::Drop,
            Transform::Reject(Reject::new(Code::UNSUPPORTED_CONTENT_FORMAT, "send CBOR")),
        ]
    }

    #[test]
    fn every_auth_verdict_round_trips() {
        for auth in auths() {
            let mut host = Mock::default();
            let verdict = write::auth(&mut host, &auth);
            assert_eq!(host.decode_auth(verdict), Some(auth));
        }
    }

    #[test]
    fn every_route_verdict_round_trips() {
        for route in routes() {
            let mut host = Mock::default();
            let verdict = write::route(&mut host, &route);
            assert_eq!(host.decode_route(verdict), Some(route));
        }
    }

    #[test]
    fn every_transform_verdict_round_trips() {
        for t in transforms() {
            let mut host = Mock::default();
            let verdict = write::transform(&mut host, &t);
            assert_eq!(host.decode_transform(verdict), Some(t));
        }
    }

    #[test]
    fn publish_always_sets_retain_and_only_the_given_options() {
        let mut host = Mock::default();
        write::route(&mut host, &Route::Publish(Publish::to("x")));
        assert_eq!(host.outputs, vec![(field::OUT_TOPIC, Out::Bytes(b"x".to_vec())), (field::OUT_RETAIN, Out::Int(0))]);
    }

    #[test]
    fn a_refused_output_returns_the_status_not_the_verdict() {
        let mut host = Mock { refuse: Some((field::OUT_TOPIC, status::TOO_LARGE)), ..Mock::default() };
        assert_eq!(write::route(&mut host, &Route::Publish(Publish::to("x"))), status::TOO_LARGE);
        let mut host = Mock { refuse: Some((field::OUT_QOS, status::INVALID)), ..Mock::default() };
        let sub = Route::Subscribe { filter: "a".into(), qos: Some(3) };
        assert_eq!(write::route(&mut host, &sub), status::INVALID);
    }

    fn echo() -> Echo {
        Echo {
            auth: Auth::Allow(principal()),
            route: Route::Read { topic: "v".into() },
            transform: Transform::Replace { payload: b"new".to_vec(), content_format: Some(0) },
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn the_hook_exports_give_the_rule_what_the_host_serves() {
        let rule = echo();
        let req = full_request();
        let who = principal();

        let mut host = Mock::default().with_request(&req);
        let v = super::super::authenticate(&mut host, &rule);
        assert_eq!(host.decode_auth(v), Some(rule.auth.clone()));

        let mut host = Mock::default().with_request(&req).with_principal(&who);
        let v = super::super::route(&mut host, &rule);
        assert_eq!(host.decode_route(v), Some(rule.route.clone()));

        for (access, topic, expected) in [
            (Access::Publish, "allowed", hook::AUTHZ_ALLOW),
            (Access::Subscribe, "denied", hook::AUTHZ_DENY),
            (Access::Subscribe, "other", hook::AUTHZ_CONTINUE),
        ] {
            let mut host = Mock::default().with_principal(&who).with_access(access, topic);
            assert_eq!(super::super::authorize(&mut host, &rule), expected);
        }
        // An access the ABI does not define is the host's error: the rule fails the hook.
        let mut host = Mock::default().with_principal(&who);
        assert_eq!(super::super::authorize(&mut host, &rule), -1);

        let up = Uplink { topic: "t".into(), payload: b"old".to_vec(), content_format: Some(60) };
        let mut host = Mock::default().with_uplink(&up).with_principal(&who);
        let v = super::super::uplink(&mut host, &rule);
        assert_eq!(host.decode_transform(v), Some(rule.transform.clone()));

        let down = Downlink { topic: "t".into(), ..Downlink::default() };
        let mut host = Mock::default().with_downlink(&down).with_principal(&who);
        let v = super::super::downlink(&mut host, &rule);
        assert_eq!(host.decode_transform(v), Some(rule.transform.clone()));

        let seen = rule.seen.lock().unwrap().clone();
        assert_eq!(seen[0], format!("{req:?}"));
        assert_eq!(seen[1], format!("{req:?} {who:?}"));
        assert_eq!(seen[2], format!("{who:?} Publish allowed"));
        assert_eq!(seen[5], format!("{up:?} {who:?}"));
        assert_eq!(seen[6], format!("{down:?} {who:?}"));
    }

    #[test]
    fn init_refusal_writes_the_reason() {
        fn refuse(config: &Config) -> Result<Box<dyn Rule>, String> {
            Err(format!("devices: required ({} entries)", config.entries().len()))
        }
        fn accept(_: &Config) -> Result<Box<dyn Rule>, String> {
            Ok(Box::new(echo()))
        }
        let mut host = Mock::default().with_config(&[("a".into(), "b".into())]);
        assert_eq!(super::super::init(&mut host, refuse).err(), Some(1));
        assert_eq!(host.text(field::OUT_REASON).as_deref(), Some("devices: required (1 entries)"));
        let mut host = Mock::default();
        let rule = super::super::init(&mut host, accept).ok().unwrap();
        assert_eq!(rule.authorize(&Principal::default(), Access::Subscribe, "denied"), Authz::Deny);
        assert!(host.outputs.is_empty());
    }
}
