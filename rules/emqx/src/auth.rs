//! `authenticate`: who the device is, from the DTLS identity, the query's `c`/`u`/`p`, or a
//! connection-mode token.

use sluice_sdk::{Auth, Code, Identity, Method, Principal, Reject, Request};

use crate::config::Settings;
use crate::password::PasswordHash;
use crate::query::{self, CLIENT_ID, PASSWORD, TOKEN, USERNAME};

/// The attribute that says how this rule let a principal in (see [`USER`], [`ANONYMOUS`]).
pub(crate) const LOGIN: &str = "emqx_login";
/// [`LOGIN`]: a configured user whose password was checked.
pub(crate) const USER: &str = "user";
/// [`LOGIN`]: let in as anonymous.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// The refusal for a wrong password or an unknown user; it never says which.
pub(crate) const BAD_CREDENTIALS: &str = "bad username or password";

/// Whether the request is EMQX 5's connection login/heartbeat/close resource.
pub(crate) fn is_connection(req: &Request) -> bool {
    matches!(req.path.as_slice(), [mode, resource] if mode == "mqtt" && resource == "connection")
}

/// The query names the hints use: EMQX 4's short ones, or connection mode's long ones.
struct Names {
    client_id: &'static str,
    credentials: &'static str,
}

const SHORT: Names = Names {
    client_id: "missing client id: add ?c=<client id> to the URL",
    credentials: "anonymous access is off: add u=<username>&p=<password> to the URL",
};

const LONG: Names = Names {
    client_id: "missing client id: add clientid=<id> to the query",
    credentials: "anonymous access is off: add username=<username>&password=<password> to the query",
};

/// A 4.00 or 4.01 refusal.
fn deny(code: Code, reason: &str) -> Auth {
    Auth::Deny(Reject::new(code, reason))
}

/// The identity the transport proved, if the config says to use it.
fn proven_identity<'a>(settings: &Settings, identity: &'a Identity) -> Option<&'a str> {
    if !settings.clientid_from_identity {
        return None;
    }
    [&identity.psk_identity, &identity.cert_subject].into_iter().flatten().map(String::as_str).find(|v| !v.is_empty())
}

/// The `authenticate` hook.
pub(crate) fn authenticate(settings: &Settings, req: &Request) -> Auth {
    if !matches!(req.path.first().map(String::as_str), Some("mqtt" | "ps")) {
        return Auth::Continue;
    }
    let connection = is_connection(req);
    let login = connection && req.method == Method::Post;
    let names = if connection { &LONG } else { &SHORT };
    let identity = proven_identity(settings, &req.identity);
    let token = query::non_empty(req, TOKEN);
    if !login && (token.is_some() || (connection && matches!(req.method, Method::Put | Method::Delete))) {
        let Some(client_id) = identity.or_else(|| query::non_empty(req, CLIENT_ID)) else {
            return deny(Code::BAD_REQUEST, LONG.client_id);
        };
        let Some(token) = token else {
            return deny(Code::BAD_REQUEST, "missing token: add token=<the token POST /mqtt/connection returned>");
        };
        return Auth::Session { client_id: client_id.to_string(), token: token.to_string() };
    }
    if let Some(id) = identity {
        return Auth::Allow(Principal {
            client_id: id.to_string(),
            username: Some(id.to_string()),
            ..Principal::default()
        });
    }
    let Some(client_id) = query::non_empty(req, CLIENT_ID) else {
        return deny(Code::BAD_REQUEST, names.client_id);
    };
    check_credentials(settings, req, client_id, names)
}

/// Checks `u`/`p` against the users, or lets the device in as anonymous.
fn check_credentials(settings: &Settings, req: &Request, client_id: &str, names: &Names) -> Auth {
    let anonymous = || {
        Auth::Allow(Principal {
            client_id: client_id.to_string(),
            attributes: vec![(LOGIN.into(), ANONYMOUS.into())],
            ..Principal::default()
        })
    };
    let Some(username) = query::non_empty(req, USERNAME) else {
        return if settings.anonymous { anonymous() } else { deny(Code::UNAUTHORIZED, names.credentials) };
    };
    let password = req.query_value(PASSWORD);
    let Some(user) = settings.users.get(username) else {
        // Spend the time a known user would, so that timing does not reveal who exists.
        let _ = PasswordHash::plain("").verify(password.unwrap_or_default());
        return if settings.anonymous { anonymous() } else { deny(Code::UNAUTHORIZED, BAD_CREDENTIALS) };
    };
    if !password.is_some_and(|p| user.secret.verify(p)) {
        return deny(Code::UNAUTHORIZED, BAD_CREDENTIALS);
    }
    if user.clientid.as_deref().is_some_and(|bound| bound != client_id) {
        return deny(Code::UNAUTHORIZED, "this user may not use this client id: check c= or the user's clientid");
    }
    Auth::Allow(Principal {
        client_id: client_id.to_string(),
        username: Some(username.to_string()),
        attributes: vec![(LOGIN.into(), USER.into())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use sluice_sdk::Config;

    fn settings(entries: &[(&str, &str)]) -> Settings {
        let cfg = Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        config::parse(&cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    fn req(method: Method, path: &str, query: &[&str]) -> Request {
        Request {
            method,
            path: path.split('/').map(String::from).collect(),
            query: query.iter().map(|q| q.to_string()).collect(),
            ..Request::default()
        }
    }

    #[test]
    fn refusals_never_echo_the_password() {
        let s = settings(&[("users.0.username", "tom"), ("users.0.password", "right")]);
        let auth = authenticate(&s, &req(Method::Put, "mqtt/t", &["c=d", "u=tom", "p=hunter2"]));
        let Auth::Deny(reject) = auth else { panic!("{auth:?}") };
        assert_eq!(reject.code, Code::UNAUTHORIZED);
        assert!(!reject.reason.contains("hunter2"));
    }

    #[test]
    fn a_known_user_without_a_password_is_refused_even_when_anonymous_is_on() {
        let s = settings(&[("anonymous", "true"), ("users.0.username", "tom"), ("users.0.password", "x")]);
        let auth = authenticate(&s, &req(Method::Put, "mqtt/t", &["c=d", "u=tom"]));
        assert_eq!(auth, deny(Code::UNAUTHORIZED, BAD_CREDENTIALS));
    }

    #[test]
    fn an_empty_identity_is_not_an_identity() {
        let s = settings(&[("clientid_from_identity", "true")]);
        let mut r = req(Method::Put, "mqtt/t", &[]);
        r.identity.psk_identity = Some(String::new());
        assert_eq!(authenticate(&s, &r), deny(Code::BAD_REQUEST, SHORT.client_id));
    }

    #[test]
    fn principals_say_how_they_were_let_in() {
        let s = settings(&[("anonymous", "true"), ("users.0.username", "tom"), ("users.0.password", "x")]);
        let login = |query: &[&str]| match authenticate(&s, &req(Method::Put, "mqtt/t", query)) {
            Auth::Allow(p) => p.attribute(LOGIN).map(str::to_string),
            other => panic!("{other:?}"),
        };
        assert_eq!(login(&["c=d", "u=tom", "p=x"]).as_deref(), Some(USER));
        assert_eq!(login(&["c=d"]).as_deref(), Some(ANONYMOUS));
        assert_eq!(login(&["c=d", "u=eve", "p=y"]).as_deref(), Some(ANONYMOUS));
    }

    #[test]
    fn an_empty_path_is_someone_elses() {
        let s = settings(&[]);
        assert_eq!(authenticate(&s, &Request::default()), Auth::Continue);
    }
}
