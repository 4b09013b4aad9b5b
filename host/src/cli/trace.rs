//! `sluice trace CLIENT_ID`: follows one device's requests through a running gateway's admin
//! API (`GET /clients/{id}/trace`) and prints each as it is answered — what came in, which
//! rule decided, the code and diagnostic, what the broker did. The answer to "why was my
//! device refused".

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// `sluice trace` options.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// The device's client id.
    pub client_id: String,
    /// The gateway's admin API address (its admin.bind).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9184")]
    pub admin: String,
    /// How long to follow (1 to 600 seconds).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The admin API's token (admin.token), if it has one; default $SLUICE_ADMIN_TOKEN.
    #[arg(long, value_name = "TOKEN", env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the JSON lines as they come.
    #[arg(long)]
    pub json: bool,
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `sluice trace`.
pub fn run(args: &TraceArgs) -> ExitCode {
    match trace(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let mut stream = TcpStream::connect(&args.admin).with_context(|| {
        format!("connecting to the admin API at {}; give --admin with the gateway's admin.bind", args.admin)
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(args.seconds + 30)))?;
    let auth = args.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /clients/{}/trace?seconds={} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
        encode(&args.client_id),
        args.seconds,
        args.admin
    );
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !line.trim().is_empty() {
        line.clear();
    }
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        let error = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
        bail!("{}: {}", status.trim(), error.unwrap_or(body));
    }
    for line in reader.lines() {
        let line = line?;
        if args.json {
            println!("{line}");
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(id) = v["tracing"].as_str() {
            println!("Following {id} for {} s; each of its requests shows when answered.", v["seconds"]);
            continue;
        }
        println!("{}", describe(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// One request, on a few lines.
fn describe(v: &Value) -> String {
    let s = |key: &str| v[key].as_str().unwrap_or_default().to_string();
    let mut out = format!("{} {} /{} from {} ({})", s("code"), s("method"), s("path"), s("peer"), s("transport"));
    if !s("diagnostic").is_empty() {
        out.push_str(&format!("\n  diagnostic: {}", s("diagnostic")));
    }
    for d in v["decisions"].as_array().into_iter().flatten() {
        let d = |key: &str| d[key].as_str().unwrap_or_default().to_string();
        out.push_str(&format!("\n  {}: {} → {}", d("hook"), d("rule"), d("verdict")));
    }
    if let Some(mqtt) = v["mqtt"].as_str() {
        out.push_str(&format!("\n  mqtt: {mqtt}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_text() {
        let v = serde_json::json!({
            "code": "4.03", "method": "PUT", "path": "ps/x", "peer": "127.0.0.1:5", "transport": "udp",
            "diagnostic": "not allowed", "decisions": [{"hook": "route", "rule": "builtin:emqx", "verdict": "publish x"}],
            "mqtt": null,
        });
        let text = describe(&v);
        assert!(text.starts_with("4.03 PUT /ps/x from 127.0.0.1:5 (udp)"), "{text}");
        assert!(text.contains("route: builtin:emqx → publish x") && text.contains("not allowed"), "{text}");
        assert_eq!(encode("dev 1/2"), "dev%201%2F2");
    }
}
