//! The rule's configuration: dotted keys from [`sluice_sdk::Config`] checked and built into
//! [`Settings`]. Every refusal names the key and the fix.

use std::collections::{BTreeMap, BTreeSet};

use sluice_sdk::Config;

use crate::acl::{Acl, Pattern};
use crate::password::PasswordHash;
use crate::suggest::unknown;

/// The top-level keys.
const TOP_KEYS: &[&str] =
    &["anonymous", "users", "anonymous_publish", "anonymous_subscribe", "default_max_age", "clientid_from_identity"];

/// The keys of one user.
const USER_KEYS: &[&str] = &["username", "password_hash", "password", "clientid", "publish", "subscribe"];

/// One configured user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The password to check.
    pub(crate) secret: PasswordHash,
    /// If set, the only client id this user may connect with.
    pub(crate) clientid: Option<String>,
    /// What the user may publish and subscribe to.
    pub(crate) acl: Acl,
}

/// The checked configuration the rule runs on.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Let in devices with no username (and, when true, unknown usernames) as anonymous.
    pub(crate) anonymous: bool,
    /// The users, by username.
    pub(crate) users: BTreeMap<String, User>,
    /// What anonymous devices may publish and subscribe to.
    pub(crate) anonymous_acl: Acl,
    /// Seconds a PubSub value lives when neither `expiry` nor Max-Age says.
    pub(crate) default_max_age: u32,
    /// Use the DTLS identity as client id and username.
    pub(crate) clientid_from_identity: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            anonymous: false,
            users: BTreeMap::new(),
            anonymous_acl: Acl::default(),
            default_max_age: 60,
            clientid_from_identity: false,
        }
    }
}

/// A pattern list being collected: `key: none`, or `key.N: pattern` items.
#[derive(Default)]
struct ListDraft {
    none: bool,
    items: BTreeMap<usize, Pattern>,
}

impl ListDraft {
    /// Adds the entry `key` (whose part after the list's name is `rest`) with `value`.
    fn add(&mut self, key: &str, rest: &[&str], value: &str) -> Result<(), String> {
        match rest {
            // `[]` too, should the host ever pass an empty YAML list through as a scalar.
            [] if value == "none" || value == "[]" => self.none = true,
            [] => {
                return Err(format!(
                    "{key}: expected a list of topic patterns, like [\"devices/${{clientid}}/#\"], or none to allow nothing"
                ));
            }
            [i] => {
                let pattern = Pattern::parse(value).map_err(|e| format!("{key}: {e}"))?;
                self.items.insert(index(key, i)?, pattern);
            }
            _ => {
                return Err(format!("{key}: a topic pattern is a string, not a list or mapping"));
            }
        }
        Ok(())
    }

    /// The list: `None` when absent (everything allowed), empty for `none`.
    fn build(self, key: &str) -> Result<Option<Vec<Pattern>>, String> {
        match (self.none, self.items.is_empty()) {
            (true, false) => Err(format!("{key}: both none and a list of patterns; keep one")),
            (true, true) => Ok(Some(Vec::new())),
            (false, true) => Ok(None),
            (false, false) => Ok(Some(self.items.into_values().collect())),
        }
    }
}

/// One user being collected.
#[derive(Default)]
struct UserDraft {
    username: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
    clientid: Option<String>,
    publish: ListDraft,
    subscribe: ListDraft,
}

/// Checks `config` and builds the settings.
pub(crate) fn parse(config: &Config) -> Result<Settings, String> {
    let mut settings = Settings::default();
    let mut seen = BTreeSet::new();
    let mut users: BTreeMap<usize, UserDraft> = BTreeMap::new();
    let (mut anon_publish, mut anon_subscribe) = (ListDraft::default(), ListDraft::default());
    for (key, value) in config.entries() {
        if !seen.insert(key.as_str()) {
            return Err(format!("{key}: given twice; keep one"));
        }
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["anonymous"] => settings.anonymous = boolean(key, value)?,
            ["clientid_from_identity"] => settings.clientid_from_identity = boolean(key, value)?,
            ["default_max_age"] => settings.default_max_age = seconds(key, value)?,
            ["anonymous_publish", rest @ ..] => anon_publish.add(key, rest, value)?,
            ["anonymous_subscribe", rest @ ..] => anon_subscribe.add(key, rest, value)?,
            ["users"] => {
                return Err(format!(
                    "{key}: expected a list of users, like users: [{{username: tom, password_hash: \"sha256$…\"}}]"
                ));
            }
            ["users", i, rest @ ..] => {
                let user = users.entry(index(key, i)?).or_default();
                user_entry(user, key, rest, value)?;
            }
            [first @ ("anonymous" | "clientid_from_identity" | "default_max_age"), ..] => {
                return Err(format!("{key}: {first} takes a single value, not a list or mapping"));
            }
            [first, ..] => return Err(unknown(key, first, TOP_KEYS)),
            [] => return Err(format!("{key}: empty key")),
        }
    }
    settings.anonymous_acl = Acl {
        publish: anon_publish.build("anonymous_publish")?,
        subscribe: anon_subscribe.build("anonymous_subscribe")?,
    };
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for (i, draft) in users {
        let (name, user) = build_user(i, draft)?;
        if let Some(first) = owners.insert(name.clone(), i) {
            return Err(format!("users.{i}.username: {name:?} is already users.{first}; usernames must be unique"));
        }
        settings.users.insert(name, user);
    }
    Ok(settings)
}

/// Records one `users.N.…` entry whose part after `users.N` is `rest`.
fn user_entry(user: &mut UserDraft, key: &str, rest: &[&str], value: &str) -> Result<(), String> {
    let scalar = |slot: &mut Option<String>| {
        if value.is_empty() {
            return Err(format!("{key}: must not be empty"));
        }
        *slot = Some(value.to_string());
        Ok(())
    };
    match rest {
        ["username"] => scalar(&mut user.username),
        ["password"] => scalar(&mut user.password),
        ["password_hash"] => scalar(&mut user.password_hash),
        ["clientid"] => scalar(&mut user.clientid),
        ["publish", rest @ ..] => user.publish.add(key, rest, value),
        ["subscribe", rest @ ..] => user.subscribe.add(key, rest, value),
        [field @ ("username" | "password" | "password_hash" | "clientid"), ..] => {
            Err(format!("{key}: {field} takes a single value, not a list or mapping"))
        }
        [field, ..] => Err(unknown(key, field, USER_KEYS)),
        [] => Err(format!("{key}: expected a mapping, like {{username: tom, password_hash: \"sha256$…\"}}")),
    }
}

/// Checks one collected user; gives its username and the built user.
fn build_user(i: usize, draft: UserDraft) -> Result<(String, User), String> {
    let Some(name) = draft.username else {
        return Err(format!("users.{i}.username: required; every user needs a username"));
    };
    let secret = match (draft.password_hash, draft.password) {
        (Some(_), Some(_)) => {
            return Err(format!("users.{i}.password: give password_hash or password, not both; keep password_hash"));
        }
        (None, None) => {
            return Err(format!(
                "users.{i}.password_hash: required; add password_hash: \"sha256$<salt hex>$<hash hex>\" (or password: for examples)"
            ));
        }
        (Some(hash), None) => PasswordHash::parse(&hash).ok_or_else(|| {
            format!(
                "users.{i}.password_hash: not a sha256$<salt hex>$<64 hex digits> hash; make one with sluice_rule_emqx::hash_password"
            )
        })?,
        (None, Some(plain)) => PasswordHash::plain(&plain),
    };
    let acl = Acl {
        publish: draft.publish.build(&format!("users.{i}.publish"))?,
        subscribe: draft.subscribe.build(&format!("users.{i}.subscribe"))?,
    };
    Ok((name, User { secret, clientid: draft.clientid, acl }))
}

/// `true` or `false`.
fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{key}: expected true or false, found {other:?}")),
    }
}

/// A whole number of seconds that fits in 32 bits.
fn seconds(key: &str, value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{key}: expected whole seconds from 0 to 4294967295, found {value:?}")),
    }
}

/// A list index segment.
fn index(key: &str, segment: &str) -> Result<usize, String> {
    match segment.parse::<usize>() {
        Ok(i) if segment.bytes().all(|b| b.is_ascii_digit()) => Ok(i),
        _ => Err(format!("{key}: {segment:?} is not a list index; write a YAML list (- item) here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, &str)]) -> Config {
        Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn error(entries: &[(&str, &str)]) -> String {
        parse(&config(entries)).err().unwrap_or_else(|| panic!("{entries:?} was accepted"))
    }

    #[test]
    fn empty_config_gives_the_defaults() {
        let s = parse(&Config::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.anonymous && !s.clientid_from_identity);
        assert_eq!(s.default_max_age, 60);
        assert!(s.users.is_empty());
        assert_eq!(s.anonymous_acl, Acl::default());
    }

    #[test]
    fn a_full_config_is_built() {
        let s = parse(&config(&[
            ("anonymous", "true"),
            ("default_max_age", "120"),
            ("clientid_from_identity", "true"),
            ("anonymous_publish", "none"),
            ("anonymous_subscribe.0", "public/#"),
            ("users.1.subscribe", "[]"),
            ("users.0.username", "tom"),
            ("users.0.password", "pw"),
            ("users.0.clientid", "dev1"),
            ("users.0.publish.0", "devices/${clientid}/#"),
            ("users.1.username", "ann"),
            ("users.1.password_hash", &crate::hash_password("x", &[1; 16])),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.anonymous && s.clientid_from_identity);
        assert_eq!(s.default_max_age, 120);
        assert_eq!(s.anonymous_acl.publish, Some(vec![]));
        assert_eq!(s.anonymous_acl.subscribe.map(|l| l.len()), Some(1));
        let tom = s.users.get("tom").unwrap_or_else(|| panic!("no tom"));
        assert_eq!(tom.clientid.as_deref(), Some("dev1"));
        assert!(tom.secret.verify("pw"));
        assert_eq!(tom.acl.subscribe, None);
        assert!(s.users.get("ann").is_some_and(|u| u.secret.verify("x") && u.acl.subscribe == Some(vec![])));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_nearest_name() {
        assert_eq!(
            error(&[("users.0.username", "t"), ("users.0.passwd", "x")]),
            "users.0.passwd: unknown key; did you mean password_hash?"
        );
        assert_eq!(error(&[("anonymus", "true")]), "anonymus: unknown key; did you mean anonymous?");
        assert_eq!(error(&[("users.0.client_id", "x")]), "users.0.client_id: unknown key; did you mean clientid?");
        assert_eq!(error(&[("max_age", "5")]), "max_age: unknown key; did you mean default_max_age?");
        assert!(error(&[("zzz", "1")]).starts_with("zzz: unknown key; expected one of anonymous, users"));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(error(&[("anonymous", "yes")]).starts_with("anonymous: expected true or false"));
        assert!(error(&[("clientid_from_identity", "1")]).starts_with("clientid_from_identity: expected true"));
        for bad in ["-1", "1.5", "", "4294967296", "+3"] {
            assert!(error(&[("default_max_age", bad)]).starts_with("default_max_age: expected whole seconds"));
        }
        assert!(error(&[("anonymous.0", "true")]).contains("takes a single value"));
        assert!(error(&[("users", "tom")]).starts_with("users: expected a list of users"));
        assert!(error(&[("users.x.username", "tom")]).contains("is not a list index"));
    }

    #[test]
    fn each_user_needs_a_username_and_exactly_one_password() {
        assert!(error(&[("users.0.password", "x")]).starts_with("users.0.username: required"));
        assert!(error(&[("users.0.username", "t")]).starts_with("users.0.password_hash: required"));
        let both = error(&[("users.0.username", "t"), ("users.0.password", "x"), ("users.0.password_hash", "y")]);
        assert!(both.starts_with("users.0.password: give password_hash or password, not both"), "{both}");
        assert!(error(&[("users.0.username", "")]).starts_with("users.0.username: must not be empty"));
    }

    #[test]
    fn a_malformed_hash_is_refused_without_echoing_it() {
        let err = error(&[("users.0.username", "t"), ("users.0.password_hash", "sha256$00$secretish")]);
        assert!(err.starts_with("users.0.password_hash: not a sha256$"), "{err}");
        assert!(!err.contains("secretish"));
    }

    #[test]
    fn duplicate_usernames_are_refused() {
        let err = error(&[
            ("users.0.username", "t"),
            ("users.0.password", "a"),
            ("users.1.username", "t"),
            ("users.1.password", "b"),
        ]);
        assert!(err.starts_with("users.1.username: \"t\" is already users.0"), "{err}");
    }

    #[test]
    fn pattern_lists_are_checked() {
        let base = [("users.0.username", "t"), ("users.0.password", "a")];
        let with = |extra: (&'static str, &'static str)| {
            let mut entries = base.to_vec();
            entries.push(extra);
            error(&entries)
        };
        assert!(with(("users.0.publish.0", "a/#/b")).starts_with("users.0.publish.0: \"a/#/b\" is not a topic filter"));
        assert!(with(("users.0.publish", "a/#")).starts_with("users.0.publish: expected a list of topic patterns"));
        assert!(with(("users.0.subscribe.0.x", "a")).contains("not a list or mapping"));
        assert!(error(&[("anonymous_publish", "none"), ("anonymous_publish.0", "a")]).contains("keep one"));
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        assert!(error(&[("anonymous", "true"), ("anonymous", "false")]).starts_with("anonymous: given twice"));
    }
}
