//! MQTT topic names and filters: matching and coverage that refuse malformed input.
//!
//! The level-by-level algorithms are the SDK's ([`sluice_sdk::topic`]), so the gateway and this
//! rule agree on what matches; this module adds the validation an access check needs: a
//! malformed filter or a topic with wildcards permits nothing.

use sluice_sdk::topic;

pub(crate) use sluice_sdk::topic::{valid_filter as is_valid_filter, valid_topic as is_valid_topic};

/// True when the MQTT topic filter `filter` matches the topic name `topic`.
///
/// `+` matches exactly one level (possibly empty), `#` matches the rest including the parent
/// level (`a/#` matches `a`), and a leading wildcard never matches a topic that starts with
/// `$`. An invalid filter or topic (a topic with wildcards, for instance) matches nothing.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    is_valid_filter(filter) && is_valid_topic(topic) && topic::matches(filter, topic)
}

/// True when every topic that `filter` matches is also matched by `pattern`: the test for
/// "may subscribe to `filter`" against a permitted `pattern`.
///
/// `a/#` covers `a/+/c`, `a/#` and `a`; `a/+/c` covers `a/+/c` and `a/b/c`; `a/b/c` does not
/// cover `a/+/c`. A leading wildcard in `pattern` does not cover a `$` topic. Invalid filters
/// cover and are covered by nothing.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    is_valid_filter(pattern) && is_valid_filter(filter) && topic::covers(pattern, filter)
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
        assert!(!is_valid_filter(&"a".repeat(65_536)));
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
