//! Topic permissions: patterns with `${clientid}`/`${username}` placeholders, and the check.

use sluice_sdk::{Access, Principal};

use crate::topic::{filter_covers, is_valid_filter, topic_matches};

/// One piece of a pattern: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

/// A permitted topic filter, possibly with placeholders (`devices/${clientid}/#`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    pieces: Vec<Piece>,
    /// Whether the pattern's literal text starts with `$` (then a substitution may too).
    dollar: bool,
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong and how to fix it.
    pub(crate) fn parse(source: &str) -> Result<Pattern, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            let (text, tail) = rest.split_at(start);
            if !text.is_empty() {
                pieces.push(Piece::Text(text.to_string()));
            }
            let Some(end) = tail.find('}') else {
                return Err(format!("{source:?}: unclosed placeholder; write ${{clientid}} or ${{username}}"));
            };
            // `}` is one byte, so `end + 1` is a character boundary.
            let (name, after) = tail.split_at(end + 1);
            pieces.push(match name {
                "${clientid}" => Piece::ClientId,
                "${username}" => Piece::Username,
                other => {
                    return Err(format!("{source:?}: unknown placeholder {other}; use ${{clientid}} or ${{username}}"));
                }
            });
            rest = after;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        let dollar = matches!(pieces.first(), Some(Piece::Text(t)) if t.starts_with('$'));
        let pattern = Pattern { pieces, dollar };
        let sample = pattern.render("x", Some("x")).unwrap_or_default();
        // A placeholder next to a wildcard (`${clientid}+`) renders as `x+`, which is invalid too.
        if !is_valid_filter(&sample) {
            return Err(format!(
                "{source:?} is not a topic filter: + and # must fill a whole level, # only at the \
                 end, and a placeholder may not share a level with + or #"
            ));
        }
        Ok(pattern)
    }

    /// The filter for one principal; `None` when a placeholder has no safe value: an empty or
    /// missing value, or one that contains `/`, `+`, `#` or NUL (which would widen the
    /// pattern or reach into another device's topics).
    fn render(&self, client_id: &str, username: Option<&str>) -> Option<String> {
        let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#', '\0']);
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::ClientId => out.push_str(Some(client_id).filter(|v| safe(v))?),
                Piece::Username => out.push_str(username.filter(|v| safe(v))?),
            }
        }
        // A value must not turn `${clientid}/…` into a `$SYS`-like topic either.
        (self.dollar || !out.starts_with('$')).then_some(out)
    }

    /// True when this pattern permits `access` on `topic` (a filter for subscribe) for `who`.
    pub(crate) fn permits(&self, who: &Principal, access: Access, topic: &str) -> bool {
        let Some(filter) = self.render(&who.client_id, who.username.as_deref()) else {
            return false;
        };
        match access {
            Access::Publish => topic_matches(&filter, topic),
            Access::Subscribe => filter_covers(&filter, topic),
        }
    }
}

/// The publish and subscribe permissions of one principal. `None` means "no list: everything
/// is allowed"; `Some(vec![])` (written `none` in the config) means "nothing is allowed".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Acl {
    /// Patterns for publishing (and setting or deleting a topic's value).
    pub(crate) publish: Option<Vec<Pattern>>,
    /// Patterns for subscribing (and reading a topic's value).
    pub(crate) subscribe: Option<Vec<Pattern>>,
}

impl Acl {
    /// True when `who` may do `access` on `topic`.
    pub(crate) fn permits(&self, who: &Principal, access: Access, topic: &str) -> bool {
        let list = match access {
            Access::Publish => &self.publish,
            Access::Subscribe => &self.subscribe,
        };
        match list {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.permits(who, access, topic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(client_id: &str, username: Option<&str>) -> Principal {
        Principal { client_id: client_id.into(), username: username.map(Into::into), ..Principal::default() }
    }

    fn pattern(source: &str) -> Pattern {
        Pattern::parse(source).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn placeholders_are_replaced_by_the_principal() {
        let p = pattern("devices/${clientid}/${username}/#");
        let dev = who("dev1", Some("tom"));
        assert!(p.permits(&dev, Access::Publish, "devices/dev1/tom/temp"));
        assert!(!p.permits(&dev, Access::Publish, "devices/dev2/tom/temp"));
        assert!(p.permits(&dev, Access::Subscribe, "devices/dev1/tom/+"));
    }

    #[test]
    fn placeholders_may_share_a_level_with_text() {
        let p = pattern("dev-${clientid}/up");
        assert!(p.permits(&who("7", None), Access::Publish, "dev-7/up"));
    }

    #[test]
    fn wildcard_client_ids_never_widen_a_pattern() {
        let p = pattern("devices/${clientid}/up");
        for id in ["+", "#", "a/b", "", "a+b", "x\0"] {
            assert!(!p.permits(&who(id, None), Access::Subscribe, "devices/+/up"), "{id:?}");
            assert!(!p.permits(&who(id, None), Access::Publish, "devices/a/b/up"), "{id:?}");
        }
    }

    #[test]
    fn a_missing_username_matches_nothing() {
        let p = pattern("users/${username}/#");
        assert!(!p.permits(&who("dev1", None), Access::Publish, "users//x"));
    }

    #[test]
    fn a_dollar_client_id_cannot_reach_system_topics() {
        let p = pattern("${clientid}/#");
        assert!(!p.permits(&who("$SYS", None), Access::Publish, "$SYS/x"));
        assert!(p.permits(&who("dev", None), Access::Publish, "dev/x"));
        let sys = pattern("$share/${clientid}");
        assert!(sys.permits(&who("dev", None), Access::Publish, "$share/dev"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_fix() {
        for bad in ["a/#/b", "a+", "${clientid}+", "a/${clientid}#", "", "${client}", "a/${clientid"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        let err = Pattern::parse("x/${client_id}").err().unwrap_or_default();
        assert!(err.contains("unknown placeholder ${client_id}"), "{err}");
    }

    #[test]
    fn absent_lists_allow_everything_and_empty_lists_nothing() {
        let dev = who("d", None);
        assert!(Acl::default().permits(&dev, Access::Publish, "any/thing"));
        let none = Acl { publish: Some(vec![]), subscribe: Some(vec![]) };
        assert!(!none.permits(&dev, Access::Publish, "any"));
        assert!(!none.permits(&dev, Access::Subscribe, "any"));
    }
}
