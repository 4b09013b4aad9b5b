//! MQTT topic names and filters: validation, matching and coverage (MQTT v5 §4.7).

/// The longest topic or filter MQTT can carry, in bytes.
const MAX_LEN: usize = 65_535;

/// True when `topic` is a valid MQTT topic name: not empty, no wildcards, no NUL, at most
/// 65535 bytes.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_LEN && !topic.contains(['+', '#', '\0'])
}

/// True when `filter` is a valid MQTT topic filter: `+` and `#` fill a whole level, `#` only
/// as the last level.
pub(crate) fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// True when the first level of `filter` is a wildcard and `name` starts with `$`: such
/// topics (`$SYS/…`) are never matched by a leading wildcard.
fn hides_dollar(filter: &str, name: &str) -> bool {
    name.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#"))
}

/// True when the MQTT topic filter `filter` matches the topic name `topic`.
///
/// `+` matches exactly one level (possibly empty), `#` matches the rest including the parent
/// level (`a/#` matches `a`), and a leading wildcard never matches a topic that starts with
/// `$`. An invalid filter or topic (a topic with wildcards, for instance) matches nothing.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if !is_valid_filter(filter) || !is_valid_topic(topic) || hides_dollar(filter, topic) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when every topic that `filter` matches is also matched by `pattern`: the test for
/// "may subscribe to `filter`" against a permitted `pattern`.
///
/// `a/#` covers `a/+/c`, `a/#` and `a`; `a/+/c` covers `a/+/c` and `a/b/c`; `a/b/c` does not
/// cover `a/+/c`. A leading wildcard in `pattern` does not cover a `$` topic. Invalid filters
/// cover and are covered by nothing.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    if !is_valid_filter(pattern) || !is_valid_filter(filter) || hides_dollar(pattern, filter) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(pl), Some(fl)) if pl == fl && pl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_matches_exactly_one_level_even_an_empty_one() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/+/c", "a//c"));
        assert!(topic_matches("+", "a"));
        assert!(topic_matches("+/+", "/a"));
        assert!(!topic_matches("a/+/c", "a/b/x/c"));
        assert!(!topic_matches("a/+", "a"));
        assert!(!topic_matches("a/+", "a/b/c"));
    }

    #[test]
    fn hash_matches_the_rest_including_the_parent() {
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("#", "/"));
        assert!(!topic_matches("a/#", "b"));
        assert!(!topic_matches("a/b/#", "a"));
    }

    #[test]
    fn literal_filters_match_only_the_same_topic() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/"));
        assert!(!topic_matches("a/b", "a"));
        assert!(!topic_matches("a", "A"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(topic_matches("a/+", "a/$x"));
    }

    #[test]
    fn invalid_filters_and_topics_match_nothing() {
        assert!(!topic_matches("a/#/b", "a/x/b"));
        assert!(!topic_matches("a#", "a#"));
        assert!(!topic_matches("a/b+", "a/b+"));
        assert!(!topic_matches("", ""));
        assert!(!topic_matches("a/+", "a/+"));
        assert!(!topic_matches("#", "a/#"));
        assert!(!topic_matches("a\0", "a\0"));
    }

    #[test]
    fn filters_are_valid_only_with_whole_level_wildcards() {
        for ok in ["a", "/", "a//b", "+", "#", "a/+/#", "+/+", "$SYS/#"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a+", "a/#/b", "a/b#", "##", "+a/b"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
        assert!(!is_valid_filter(&"a".repeat(MAX_LEN + 1)));
    }

    #[test]
    fn topics_are_valid_without_wildcards() {
        assert!(is_valid_topic("a/b"));
        assert!(is_valid_topic("/"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("a/+"));
        assert!(!is_valid_topic("a/#"));
        assert!(!is_valid_topic("a+b"));
    }

    #[test]
    fn hash_pattern_covers_narrower_filters() {
        assert!(filter_covers("a/#", "a/+/c"));
        assert!(filter_covers("a/#", "a/#"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/#", "a/b/c"));
        assert!(filter_covers("#", "+/#"));
        assert!(!filter_covers("a/#", "#"));
        assert!(!filter_covers("a/#", "b/#"));
    }

    #[test]
    fn plus_pattern_covers_one_level_but_not_a_hash() {
        assert!(filter_covers("a/+/c", "a/+/c"));
        assert!(filter_covers("a/+/c", "a/b/c"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/+/#", "a/#"));
        assert!(!filter_covers("a/+", "a"));
    }

    #[test]
    fn literal_pattern_does_not_cover_a_wildcard_filter() {
        assert!(!filter_covers("a/b/c", "a/+/c"));
        assert!(!filter_covers("a/b", "a/#"));
        assert!(filter_covers("a/b", "a/b"));
        assert!(!filter_covers("a/b", "a/b/c"));
    }

    #[test]
    fn leading_wildcard_pattern_does_not_cover_dollar_filters() {
        assert!(!filter_covers("#", "$SYS/#"));
        assert!(!filter_covers("+/+", "$SYS/x"));
        assert!(filter_covers("$SYS/#", "$SYS/+"));
        assert!(filter_covers("#", "#"));
    }

    #[test]
    fn invalid_filters_are_never_covered() {
        assert!(!filter_covers("#", "a/#/b"));
        assert!(!filter_covers("a/#/b", "a/x/b"));
        assert!(!filter_covers("#", ""));
    }
}
