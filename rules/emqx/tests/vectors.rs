//! Conformance vectors for `builtin:emqx`: EMQX's CoAP URL model (DESIGN §3) as data.
//!
//! Each [`Case`] is a config, a request, and the answers the rule must give: `authenticate`,
//! then `route` and `authorize` for the principal it produced. The list is plain data
//! ([`vectors`], [`refusals`]); `rule.yaml` holds the same cases as package vectors (generated,
//! and checked to be in sync, by `vectors/yaml.rs`), which `host/tests/conformance.rs` runs
//! against both `builtin:emqx` and `emqx.wasm`: the answers must be identical.

use sluice_sdk::{Access, Auth, Authz, Config, Principal, Request, Route};

#[path = "vectors/cases.rs"]
mod cases;
#[path = "vectors/support.rs"]
mod support;

pub use cases::{refusals, vectors};

/// A rule config as dotted keys and values.
pub type Entries = Vec<(&'static str, String)>;

/// One conformance vector.
pub struct Case {
    /// What the case shows, as a sentence.
    pub name: &'static str,
    /// The rule's config, as dotted keys.
    pub config: Entries,
    /// The request.
    pub request: Request,
    /// The expected `authenticate` verdict.
    pub auth: Auth,
    /// The expected `route` verdict, for the principal of `auth`.
    pub route: Route,
    /// Expected `authorize` verdicts for the principal of `auth`: access, topic or filter, verdict.
    pub authorize: Vec<(Access, &'static str, Authz)>,
}

/// The principal later hooks see: the allowed one, the session's client id, or nobody.
fn principal(auth: &Auth) -> Principal {
    match auth {
        Auth::Allow(p) => p.clone(),
        Auth::Session { client_id, .. } => Principal::new(client_id.clone()),
        Auth::Continue | Auth::Deny(_) => Principal::default(),
    }
}

/// Builds the rule for `entries` through the public `init`.
fn build(entries: &Entries) -> Result<Box<dyn sluice_sdk::Rule>, String> {
    let config = Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    sluice_rule_emqx::init(&config)
}

/// Runs one case; every mismatch is described.
fn run(case: &Case) -> Vec<String> {
    let rule = match build(&case.config) {
        Ok(rule) => rule,
        Err(e) => return vec![format!("{}: init refused the config: {e}", case.name)],
    };
    let mut failures = Vec::new();
    let auth = rule.authenticate(&case.request);
    if auth != case.auth {
        failures.push(format!("{}: authenticate\n  got      {auth:?}\n  expected {:?}", case.name, case.auth));
    }
    let who = principal(&case.auth);
    let route = rule.route(&case.request, &who);
    if route != case.route {
        failures.push(format!("{}: route\n  got      {route:?}\n  expected {:?}", case.name, case.route));
    }
    for (access, topic, expected) in &case.authorize {
        let got = rule.authorize(&who, *access, topic);
        if got != *expected {
            failures.push(format!("{}: authorize {access:?} {topic:?}: got {got:?}, expected {expected:?}", case.name));
        }
    }
    failures
}

#[test]
fn every_vector_gives_the_expected_answers() {
    let cases = vectors();
    let failures: Vec<String> = cases.iter().flat_map(run).collect();
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn vector_names_are_unique() {
    let mut names: Vec<&str> = vectors().iter().map(|c| c.name).collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "two vectors share a name");
}

#[test]
fn every_refusal_names_the_key_and_the_fix() {
    for (name, config, expected) in refusals() {
        match build(&config) {
            Ok(_) => panic!("{name}: init accepted {config:?}"),
            Err(e) => assert!(e.starts_with(expected), "{name}: got {e:?}, expected it to start with {expected:?}"),
        }
    }
}

#[test]
fn the_hashed_user_uses_the_documented_scheme() {
    assert_eq!(sluice_rule_emqx::hash_password("secret", &[0u8; 16]), support::SECRET_HASH);
    assert!(sluice_rule_emqx::verify_password(support::SECRET_HASH, "secret"));
}

#[test]
fn refusals_never_echo_a_password() {
    for case in vectors() {
        if let (Auth::Deny(r), Some(p)) = (&case.auth, case.request.query_value(&["p", "password"]))
            && !p.is_empty()
        {
            assert!(!r.reason.contains(p), "{}: {:?}", case.name, r.reason);
        }
    }
}

#[path = "vectors/yaml.rs"]
mod yaml;

#[test]
fn rule_yaml_holds_every_case_as_package_vectors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rule.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Some((head, _)) = text.split_once(yaml::MARKER) else {
        panic!("rule.yaml lost the marker line {:?}", yaml::MARKER)
    };
    let expected = format!("{head}{}{}", yaml::MARKER, yaml::vectors_yaml(&vectors()));
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    } else {
        assert!(
            text == expected,
            "rule.yaml is out of date: run SLUICE_BLESS=1 cargo test -p sluice-rule-emqx --test vectors"
        );
    }
}
