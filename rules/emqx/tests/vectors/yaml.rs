//! `rules/emqx/rule.yaml` is generated from the cases: the test below renders every case as
//! package vectors (one per hook answer, in the format of `sluice::rules::vectors`) and
//! compares with the file. After changing a case, regenerate with
//! `SLUICE_BLESS=1 cargo test -p sluice-rule-emqx --test vectors`.
//!
//! The vectors inside `emqx.wasm` are what `host/tests/conformance.rs` runs against both
//! `builtin:emqx` and `emqx.wasm`.

use sluice_sdk::{Access, Auth, Authz, Principal, Publish, Reject, Request, Route};

use crate::{Case, Entries};

/// A JSON string (also a valid YAML double-quoted scalar).
fn s(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn opt_s(v: Option<&str>) -> String {
    v.map_or("null".into(), s)
}

enum Node {
    Leaf(String),
    Branch(Vec<(String, Node)>),
}

fn insert(node: &mut Vec<(String, Node)>, path: &[&str], value: &str) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        node.push((first.to_string(), Node::Leaf(value.to_string())));
        return;
    }
    if !node.iter().any(|(k, _)| k == first) {
        node.push((first.to_string(), Node::Branch(Vec::new())));
    }
    if let Some((_, Node::Branch(children))) = node.iter_mut().find(|(k, _)| k == first) {
        insert(children, rest, value);
    }
}

fn render(node: &Node) -> String {
    match node {
        Node::Leaf(v) => s(v),
        Node::Branch(children) => {
            let is_list = !children.is_empty() && children.iter().enumerate().all(|(i, (k, _))| *k == i.to_string());
            let items: Vec<String> = children
                .iter()
                .map(|(k, v)| if is_list { render(v) } else { format!("{}: {}", s(k), render(v)) })
                .collect();
            if is_list { format!("[{}]", items.join(", ")) } else { format!("{{{}}}", items.join(", ")) }
        }
    }
}

/// The dotted entries as the nested YAML config the gateway flattens back to them.
fn config(entries: &Entries) -> String {
    let mut root = Vec::new();
    for (k, v) in entries {
        insert(&mut root, &k.split('.').collect::<Vec<_>>(), v);
    }
    render(&Node::Branch(root))
}

fn request(r: &Request) -> String {
    let mut parts = vec![
        format!("method: {}", format!("{:?}", r.method).to_uppercase()),
        format!("path: [{}]", r.path.iter().map(|p| s(p)).collect::<Vec<_>>().join(", ")),
    ];
    if !r.query.is_empty() {
        parts.push(format!("query: [{}]", r.query.iter().map(|q| s(q)).collect::<Vec<_>>().join(", ")));
    }
    if let Some(o) = r.observe {
        parts.push(format!("observe: {o}"));
    }
    if let Some(m) = r.max_age {
        parts.push(format!("max_age: {m}"));
    }
    if let Some(id) = &r.identity.psk_identity {
        parts.push(format!("psk_identity: {}", s(id)));
    }
    if let Some(id) = &r.identity.cert_subject {
        parts.push(format!("cert_subject: {}", s(id)));
    }
    format!("{{{}}}", parts.join(", "))
}

fn principal(p: &Principal) -> String {
    let attributes = if p.attributes.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = p.attributes.iter().map(|(k, v)| format!("{}: {}", s(k), s(v))).collect();
        format!(", attributes: {{{}}}", pairs.join(", "))
    };
    format!("{{client_id: {}, username: {}{attributes}}}", s(&p.client_id), opt_s(p.username.as_deref()))
}

fn reject(r: &Reject) -> String {
    format!("{{code: {}, reason: {}}}", s(&r.code.to_string()), s(&r.reason))
}

fn auth(a: &Auth) -> String {
    match a {
        Auth::Continue => "continue".into(),
        Auth::Allow(p) => format!("{{allow: {}}}", principal(p)),
        Auth::Session { client_id, token } => {
            format!("{{session: {{client_id: {}, token: {}}}}}", s(client_id), s(token))
        }
        Auth::Deny(r) => format!("{{deny: {}}}", reject(r)),
    }
}

fn publish(p: &Publish) -> String {
    format!("{{topic: {}, qos: {}, retain: {}, expiry: {}}}", s(&p.topic), opt(p.qos), p.retain, opt(p.expiry))
}

fn route(r: &Route) -> String {
    match r {
        Route::Continue => "continue".into(),
        Route::Publish(p) => format!("{{publish: {}}}", publish(p)),
        Route::SetValue(p) => format!("{{set_value: {}}}", publish(p)),
        Route::Subscribe { filter, qos } => format!("{{subscribe: {{filter: {}, qos: {}}}}}", s(filter), opt(*qos)),
        Route::Unsubscribe { filter } => format!("{{unsubscribe: {{filter: {}}}}}", s(filter)),
        Route::Read { topic } => format!("{{read: {{topic: {}}}}}", s(topic)),
        Route::ObserveValue { topic, qos } => format!("{{observe_value: {{topic: {}, qos: {}}}}}", s(topic), opt(*qos)),
        Route::Delete { topic } => format!("{{delete: {{topic: {}}}}}", s(topic)),
        Route::Connect => "connect".into(),
        Route::Heartbeat => "heartbeat".into(),
        Route::Disconnect => "disconnect".into(),
        Route::Respond { code, payload, content_format } => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{{respond: {{code: {}, payload_hex: {}, content_format: {}}}}}",
                s(&code.to_string()),
                s(&hex),
                opt(*content_format)
            )
        }
        Route::Reject(r) => format!("{{reject: {}}}", reject(r)),
    }
}

fn access(a: Access) -> &'static str {
    match a {
        Access::Publish => "publish",
        Access::Subscribe => "subscribe",
    }
}

fn authz(a: &Authz) -> &'static str {
    match a {
        Authz::Continue => "continue",
        Authz::Allow => "allow",
        Authz::Deny => "deny",
    }
}

/// Every case as vectors: authenticate, route (for the principal authenticate gave), and
/// each authorize check.
pub fn vectors_yaml(cases: &[Case]) -> String {
    let mut out = String::new();
    for case in cases {
        let cfg = config(&case.config);
        let who = principal(&crate::principal(&case.auth));
        let head = |out: &mut String, name: String, hook: &str| {
            out.push_str(&format!("  - name: {}\n    hook: {hook}\n    config: {cfg}\n", s(&name)));
        };
        head(&mut out, format!("{}: authenticate", case.name), "authenticate");
        out.push_str(&format!("    request: {}\n    expect: {}\n", request(&case.request), auth(&case.auth)));
        head(&mut out, format!("{}: route", case.name), "route");
        out.push_str(&format!(
            "    request: {}\n    principal: {who}\n    expect: {}\n",
            request(&case.request),
            route(&case.route)
        ));
        for (a, topic, verdict) in &case.authorize {
            head(&mut out, format!("{}: authorize {} {}", case.name, access(*a), topic), "authorize");
            out.push_str(&format!(
                "    principal: {who}\n    access: {}\n    topic: {}\n    expect: {}\n",
                access(*a),
                s(topic),
                authz(verdict)
            ));
        }
    }
    out
}

/// The marker line after which `rule.yaml` holds the generated vectors.
pub const MARKER: &str = "# --- generated from rules/emqx/tests/vectors/cases.rs; do not edit below ---\n";
