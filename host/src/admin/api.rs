//! The admin API's routes (described for clients in `openapi.json`, served at
//! `/openapi.json`): what each endpoint answers, who may ask (the bearer token, same-origin
//! writes) and the dashboard's files.

use std::time::Duration;

use serde_json::{Value, json};

use super::Admin;
use super::http::{Head, decode, same_secret};
use crate::gateway::ClientQuery;

/// The dashboard and the API description, in the binary.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const OPENAPI: &str = include_str!("openapi.json");

/// Clients on one page by default, and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// How long a trace runs by default, and at most.
const TRACE_SECS: u64 = 30;
const MAX_TRACE_SECS: u64 = 600;
/// The longest `POST /rules/reload` waits for the reload to finish.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// An answer.
pub(crate) enum Reply {
    /// A whole body.
    Body {
        status: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
        /// One extra header line (without CRLF), e.g. `Allow: GET`.
        extra: Option<&'static str>,
    },
    /// A trace: JSON lines of `client_id`'s requests for `secs`.
    Trace { client_id: String, secs: u64 },
}

impl Reply {
    pub(crate) fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply::Body { status, content_type: "text/plain; charset=utf-8", body: body.into().into_bytes(), extra: None }
    }

    fn json(status: &'static str, value: &Value) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Reply::Body { status, content_type: "application/json", body, extra: None }
    }

    fn error(status: &'static str, message: impl Into<String>) -> Reply {
        Reply::json(status, &json!({"error": message.into()}))
    }

    fn file(content_type: &'static str, body: &'static str) -> Reply {
        Reply::Body { status: "200 OK", content_type, body: body.as_bytes().to_vec(), extra: None }
    }

    fn with(self, header: &'static str) -> Reply {
        match self {
            Reply::Body { status, content_type, body, .. } => {
                Reply::Body { status, content_type, body, extra: Some(header) }
            }
            trace => trace,
        }
    }
}

/// The endpoints, for the 404's hint.
const ENDPOINTS: &str = "/healthz, /metrics, /rules, /overview, /clients, /config, /openapi.json or / (the dashboard)";

/// Answers one request.
pub(crate) async fn answer(admin: &Admin, head: &Head<'_>) -> Reply {
    let method = if head.method == "HEAD" { "GET" } else { head.method };
    let segments: Vec<String> = head.path.trim_start_matches('/').split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let public = matches!(segments.as_slice(), ["healthz"] | [""] | ["dashboard", _]);
    if !public && let Some(reply) = refuse_unauthorized(admin, head) {
        return reply;
    }
    let read_only = method == "GET"
        && matches!(
            segments.as_slice(),
            ["healthz" | "metrics" | "rules" | "overview" | "openapi.json" | ""] | ["dashboard", _]
        );
    if admin.read_only && !read_only {
        return Reply::error(
            "403 Forbidden",
            "this admin API listens beyond loopback without admin.token, so it serves /healthz, /metrics, /rules and /overview only; set admin.token (or admin.token_file) to list, trace or end devices, reload rules or read the config",
        );
    }
    if matches!(method, "POST" | "DELETE")
        && let Some(reply) = refuse_cross_origin(head)
    {
        return reply;
    }
    match (method, segments.as_slice()) {
        ("GET", ["healthz"]) => match admin.unhealthy().await {
            None => Reply::text("200 OK", "ok\n"),
            Some(reason) => Reply::text("503 Service Unavailable", format!("{reason}\n")),
        },
        ("GET", ["metrics"]) => Reply::Body {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: admin.metrics_text().await.into_bytes(),
            extra: None,
        },
        ("GET", ["rules"]) => Reply::json("200 OK", &admin.rules_json()),
        ("POST", ["rules", "reload"]) => reload(admin).await,
        ("GET", ["overview"]) => Reply::json("200 OK", &admin.overview().await),
        ("GET", ["config"]) => Reply::json("200 OK", &admin.config),
        ("GET", ["clients"]) => match query(head) {
            Ok(query) => Reply::json("200 OK", &json!(admin.gateway.clients_page(&query))),
            Err(message) => Reply::error("400 Bad Request", message),
        },
        ("GET", ["clients", id]) => match admin.gateway.client_detail(id) {
            Some(detail) => Reply::json("200 OK", &json!(detail)),
            None => unknown(id),
        },
        ("DELETE", ["clients", id]) => match admin.gateway.kick(id) {
            Some(kicked) => Reply::json("200 OK", &json!(kicked)),
            None => unknown(id),
        },
        ("GET", ["clients", id, "trace"]) => {
            let secs = head.param("seconds").map_or(Ok(TRACE_SECS), |s| s.parse::<u64>());
            match secs {
                Ok(secs @ 1..=MAX_TRACE_SECS) => Reply::Trace { client_id: (*id).to_string(), secs },
                _ => Reply::error("400 Bad Request", format!("seconds: give a number from 1 to {MAX_TRACE_SECS}")),
            }
        }
        ("GET", [""]) => Reply::file("text/html; charset=utf-8", INDEX_HTML),
        ("GET", ["dashboard", "app.js"]) => Reply::file("text/javascript; charset=utf-8", APP_JS),
        ("GET", ["dashboard", "style.css"]) => Reply::file("text/css; charset=utf-8", STYLE_CSS),
        ("GET", ["openapi.json"]) => Reply::file("application/json", OPENAPI),
        (_, path) => match allowed(path) {
            Some(allow) => {
                Reply::error("405 Method Not Allowed", format!("use {}", allow.trim_start_matches("Allow: ")))
                    .with(allow)
            }
            None => Reply::error("404 Not Found", format!("no such endpoint; try {ENDPOINTS}")),
        },
    }
}

/// The methods a known path takes, as an `Allow` header line.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["clients", _] => "Allow: GET, HEAD, DELETE",
        ["rules", "reload"] => "Allow: POST",
        ["healthz" | "metrics" | "rules" | "overview" | "config" | "clients" | "openapi.json" | ""]
        | ["clients", _, "trace"]
        | ["dashboard", _] => "Allow: GET, HEAD",
        _ => return None,
    })
}

fn unknown(id: &str) -> Reply {
    Reply::error(
        "404 Not Found",
        format!(
            "no client {id:?} on this gateway: it has not made a request here (or was quiet for 10 minutes with no observer and no session); find client ids with GET /clients?prefix=…"
        ),
    )
}

/// 401 unless the request carries the configured bearer token (when one is configured).
fn refuse_unauthorized(admin: &Admin, head: &Head<'_>) -> Option<Reply> {
    let token = admin.token.as_deref()?;
    let given = head.header("Authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    if given.is_some_and(|g| same_secret(g, token)) {
        return None;
    }
    let message = if given.is_some() {
        "the bearer token is not admin.token: send Authorization: Bearer <admin.token>"
    } else {
        "this gateway's admin API needs its token: send Authorization: Bearer <admin.token>"
    };
    Some(Reply::error("401 Unauthorized", message).with("WWW-Authenticate: Bearer realm=\"sluice\""))
}

/// 403 for a write a browser sends from another site (its `Origin` is not this server).
fn refuse_cross_origin(head: &Head<'_>) -> Option<Reply> {
    let origin = head.header("Origin")?;
    let host = head.header("Host").unwrap_or_default();
    if !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}")) {
        return None;
    }
    Some(Reply::error(
        "403 Forbidden",
        format!(
            "a request from {origin} may not change this gateway; use the dashboard this gateway serves, or a client that sends no Origin"
        ),
    ))
}

/// The `/clients` query, checked.
fn query(head: &Head<'_>) -> Result<ClientQuery, String> {
    let limit = match head.param("limit") {
        None => PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..=MAX_PAGE) => n,
            _ => return Err(format!("limit: give a number from 1 to {MAX_PAGE}")),
        },
    };
    let transport = match head.param("transport").as_deref() {
        None | Some("") => None,
        Some(t) => Some(crate::gateway::transport_of(t).ok_or_else(|| format!("transport: {t:?} is not udp or dtls"))?),
    };
    Ok(ClientQuery {
        prefix: head.param("prefix").unwrap_or_default(),
        user: head.param("user").filter(|u| !u.is_empty()),
        transport,
        after: head.param("after").filter(|a| !a.is_empty()),
        limit,
    })
}

/// `POST /rules/reload`: asks for a reload and answers `/rules` once it finished.
async fn reload(admin: &Admin) -> Reply {
    let Some(trigger) = &admin.reload else {
        return Reply::error("409 Conflict", "this gateway runs without a reloader (no rules to reload)");
    };
    let mut status = admin.reloads.clone();
    let before = status.borrow_and_update().count;
    trigger.reload_now();
    let finished = tokio::time::timeout(RELOAD_WAIT, async {
        while status.borrow_and_update().count == before {
            if status.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    match finished {
        Ok(true) => Reply::json("200 OK", &admin.rules_json()),
        _ => Reply::error(
            "503 Service Unavailable",
            format!("the reload did not finish within {} s; GET /rules shows it when it does", RELOAD_WAIT.as_secs()),
        ),
    }
}
