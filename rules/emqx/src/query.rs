//! Uri-Query parameters: EMQX's short names and their long aliases, parsed and checked.

use sluice_sdk::{Code, Reject, Request};

/// `c` / `clientid`: the MQTT client id.
pub(crate) const CLIENT_ID: &[&str] = &["c", "clientid"];
/// `u` / `username`.
pub(crate) const USERNAME: &[&str] = &["u", "username"];
/// `p` / `password`.
pub(crate) const PASSWORD: &[&str] = &["p", "password"];
/// `t` / `token`: the connection-mode session token.
pub(crate) const TOKEN: &[&str] = &["t", "token"];
/// `q` / `qos`.
const QOS: &[&str] = &["q", "qos"];
/// `r` / `retain`.
const RETAIN: &[&str] = &["r", "retain"];
/// `expiry`: MQTT v5 Message Expiry Interval in seconds.
const EXPIRY: &[&str] = &["expiry"];

/// A query value that is present and not empty (`c=` counts as missing).
pub(crate) fn non_empty<'a>(req: &'a Request, keys: &[&str]) -> Option<&'a str> {
    req.query_value(keys).filter(|v| !v.is_empty())
}

/// A 4.00 refusal.
fn bad(reason: &str) -> Reject {
    Reject::new(Code::BAD_REQUEST, reason)
}

/// The `q`/`qos` override: 0, 1 or 2; `None` when absent.
pub(crate) fn qos(req: &Request) -> Result<Option<u8>, Reject> {
    match req.query_value(QOS) {
        None => Ok(None),
        Some("0") => Ok(Some(0)),
        Some("1") => Ok(Some(1)),
        Some("2") => Ok(Some(2)),
        Some(_) => Err(bad("bad qos: use q=0, q=1 or q=2")),
    }
}

/// The `r`/`retain` override: `true`/`false`/`1`/`0`; `None` when absent.
pub(crate) fn retain(req: &Request) -> Result<Option<bool>, Reject> {
    match req.query_value(RETAIN) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(bad("bad retain: use r=true or r=false")),
    }
}

/// The `expiry` override in seconds; `None` when absent.
pub(crate) fn expiry(req: &Request) -> Result<Option<u32>, Reject> {
    match req.query_value(EXPIRY) {
        None => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(seconds) if v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(seconds)),
            _ => Err(bad("bad expiry: use expiry=<seconds>, a whole number")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &[&str]) -> Request {
        Request { query: query.iter().map(|q| q.to_string()).collect(), ..Request::default() }
    }

    #[test]
    fn qos_accepts_zero_to_two_under_both_names() {
        assert_eq!(qos(&req(&[])), Ok(None));
        assert_eq!(qos(&req(&["q=1"])), Ok(Some(1)));
        assert_eq!(qos(&req(&["qos=2"])), Ok(Some(2)));
        for bad in ["q=3", "q=", "q", "qos=-1", "q=01x"] {
            assert_eq!(qos(&req(&[bad])).map_err(|r| r.code), Err(Code::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn retain_accepts_words_and_digits() {
        assert_eq!(retain(&req(&["r=true"])), Ok(Some(true)));
        assert_eq!(retain(&req(&["retain=0"])), Ok(Some(false)));
        assert!(retain(&req(&["r=yes"])).is_err());
    }

    #[test]
    fn expiry_is_a_whole_number_of_seconds() {
        assert_eq!(expiry(&req(&["expiry=30"])), Ok(Some(30)));
        for bad in ["expiry=-1", "expiry=+5", "expiry=1.5", "expiry=", "expiry=99999999999"] {
            assert!(expiry(&req(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_values_count_as_missing() {
        assert_eq!(non_empty(&req(&["c="]), CLIENT_ID), None);
        assert_eq!(non_empty(&req(&["clientid=a=b"]), CLIENT_ID), Some("a=b"));
    }
}
