//! "Did you mean …?": the nearest known key for a misspelt or foreign one.

/// Names people write for a key, from other gateways or habit.
const ALIASES: &[(&str, &str)] = &[
    ("allow_anonymous", "anonymous"),
    ("anonymous_access", "anonymous"),
    ("max_age", "default_max_age"),
    ("user", "users"),
    ("accounts", "users"),
    ("peer_cert_as_clientid", "clientid_from_identity"),
    ("peer_cert_as_username", "clientid_from_identity"),
    ("identity_as_clientid", "clientid_from_identity"),
    ("passwd", "password_hash"),
    ("pass", "password_hash"),
    ("pwd", "password_hash"),
    ("hash", "password_hash"),
    ("password_sha256", "password_hash"),
    ("name", "username"),
    ("login", "username"),
    ("user_name", "username"),
    ("client_id", "clientid"),
    ("client", "clientid"),
    ("pub", "publish"),
    ("sub", "subscribe"),
];

/// The refusal for an unknown key `field` (a segment of `key`), with the nearest known name.
pub(crate) fn unknown(key: &str, field: &str, known: &[&str]) -> String {
    match suggest(field, known) {
        Some(name) => format!("{key}: unknown key; did you mean {name}?"),
        None => format!("{key}: unknown key; expected one of {}", known.join(", ")),
    }
}

/// The known name nearest to `field`: a listed alias, or within a small edit distance.
fn suggest<'a>(field: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = field.to_ascii_lowercase();
    if let Some((_, to)) = ALIASES.iter().find(|(from, to)| *from == lower && known.contains(to)) {
        return known.iter().copied().find(|k| k == to);
    }
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = i;
        let mut next = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let left = next.last().copied().unwrap_or(usize::MAX);
            let up = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let cost = diagonal + usize::from(ca != *cb);
            next.push(cost.min(left.saturating_add(1)).min(up.saturating_add(1)));
            diagonal = up;
        }
        row = next;
    }
    row.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn aliases_from_other_gateways_are_suggested() {
        assert_eq!(suggest("peer_cert_as_clientid", &["clientid_from_identity"]), Some("clientid_from_identity"));
        assert_eq!(suggest("clientId", &["clientid", "username"]), Some("clientid"));
        assert_eq!(suggest("zzz", &["clientid", "username"]), None);
    }

    #[test]
    fn an_alias_is_only_suggested_where_its_target_is_known() {
        assert_eq!(suggest("pub", &["anonymous", "users"]), None);
    }
}
