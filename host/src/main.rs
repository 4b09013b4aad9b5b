//! The `sluice` command: `run`, `check`, `rule`, `passwd`, `certs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::{Config, Problem, Problems};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a CoAP gateway for IoT fleets (CoAP devices ⇄ MQTT, decided by rules).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway. With no config: CoAP on 0.0.0.0:5683, the embedded broker on
    /// 127.0.0.1:1883, and builtin:emqx letting any client in.
    Run(RunArgs),
    /// Checks a config file: lists every problem with its file, key and fix (exit 1).
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Rule packages: new, build, pack, inspect, test.
    Rule {
        #[command(subcommand)]
        command: sluice::cli::RuleCommand,
    },
    /// Prints the password_hash of a password, for the users of builtin:emqx.
    Passwd {
        /// The password (read from standard input when absent).
        password: Option<String>,
    },
    /// Follows one device's requests through a running gateway (its admin API): each request
    /// as it is answered, with the rules that decided, the code and the diagnostic.
    Trace(sluice::cli::TraceArgs),
    /// Certificates for CoAP over DTLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Writes a development CA, a server certificate for localhost and 127.0.0.1, and a client
    /// certificate, as PEM files (ca.crt, ca.key, server.crt, server.key, client.crt,
    /// client.key). For development only: the CA key sits beside them.
    Dev {
        /// The folder to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The client certificate's common name: the device identity rules see.
        #[arg(long, value_name = "NAME", default_value = "dev1")]
        client_cn: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file (YAML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where to serve CoAP over UDP (overrides coap.bind).
    #[arg(long, value_name = "ADDR")]
    coap_bind: Option<SocketAddr>,
    /// Where to serve CoAP over DTLS (overrides dtls.bind; the config's dtls: section gives
    /// the keys or certificates).
    #[arg(long, value_name = "ADDR")]
    coaps_bind: Option<SocketAddr>,
    /// The broker: `embedded`, `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (overrides mqtt.broker).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// The folder of rule packages to load and watch.
    #[arg(long, value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// Where to serve the admin HTTP API (/healthz, /metrics, /rules), or `none` (overrides
    /// admin.bind; default 127.0.0.1:9184).
    #[arg(long, value_name = "ADDR", value_parser = admin_bind)]
    admin_bind: Option<AdminBind>,
}

/// `--admin-bind`: an address, or `none` for no admin API.
#[derive(Clone, Copy, Debug)]
struct AdminBind(Option<SocketAddr>);

fn admin_bind(text: &str) -> Result<AdminBind, String> {
    if text.is_empty() || text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("off") {
        return Ok(AdminBind(None));
    }
    text.parse()
        .map(|addr| AdminBind(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address; write IP:PORT like 127.0.0.1:9184, or none"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match sluice::check::check(&config) {
            Ok(access) => {
                println!("{}: OK", config.display());
                println!("{access}");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{problems}");
                eprintln!("{} problem(s) found.", problems.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Rule { command } => sluice::cli::run(command),
        Command::Trace(args) => sluice::cli::trace(&args),
        Command::Certs { command: CertsCommand::Dev { out, client_cn } } => {
            match sluice::transport::dtls::certs::write_dev(&out, &client_cn) {
                Ok(()) => {
                    for name in sluice::transport::dtls::certs::DEV_FILES {
                        println!("{}", out.join(name).display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Passwd { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    if std::io::stdin().read_line(&mut line).is_err() {
                        eprintln!("sluice: could not read the password from standard input");
                        return ExitCode::FAILURE;
                    }
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let salt: [u8; 16] = rand::random();
            println!("{}", sluice_rule_emqx::hash_password(&password, &salt));
            ExitCode::SUCCESS
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|p| anyhow::anyhow!("{p}"))?,
        None => Config::zero_config(),
    };
    if let Some(addr) = args.coap_bind {
        config.coap.bind = addr;
    }
    if let Some(addr) = args.coaps_bind {
        if !config.dtls.enabled() {
            let problem = Problem {
                file: "command line".into(),
                key: "--coaps-bind".into(),
                message: "DTLS needs credentials: give --config with a dtls: section that sets psk_file, or cert_file and key_file (see examples/dtls-psk.yaml)".into(),
            };
            anyhow::bail!("{}", Problems(vec![problem]));
        }
        config.dtls.bind = addr;
    }
    if let Some(broker) = args.mqtt {
        config.mqtt.broker = sluice::config::Broker::parse(&broker);
    }
    if let Some(dir) = args.rules_dir {
        // Absolute, so that it means the same folder after a reload of the config file.
        config.rules_dir = Some(std::path::absolute(&dir).with_context(|| format!("--rules-dir {}", dir.display()))?);
    }
    if let Some(AdminBind(bind)) = args.admin_bind {
        config.admin.bind = bind;
    }

    // rumqttd (the embedded broker) logs every client disconnect as an error: keep it quiet
    // unless asked for by name (RUST_LOG=rumqttd=info,…).
    let directives = match std::env::var("RUST_LOG") {
        Ok(env) if env.contains("rumqttd") => env,
        Ok(env) if !env.trim().is_empty() => format!("rumqttd=off,{env}"),
        _ => format!("rumqttd=off,{}", config.log.level),
    };
    let filter = sluice::config::log_filter(&directives).unwrap_or_else(|_| EnvFilter::new("rumqttd=off,info"));
    // Colours only on a terminal: a log file or a pipe gets plain `key=value` fields to grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        // The handlers are in place before the gateway says it serves: a SIGTERM right after
        // "Sluice is serving." (a supervisor, a test) stops it gracefully, never by default.
        let signals = Signals::install();
        let server = sluice::server::start_from(config, args.config.as_deref()).await?;
        shutdown_signal(&server, signals).await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// SIGTERM and SIGHUP, listened to from the start.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                _ => None,
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// Resolves on SIGINT or SIGTERM; SIGHUP reloads the config file and the rules meanwhile.
async fn shutdown_signal(server: &sluice::server::Server, signals: Signals) {
    #[cfg(unix)]
    {
        let Some((mut term, mut hup)) = signals.streams else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config file and the rules.");
                    server.reload_rules();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (server, signals);
        let _ = tokio::signal::ctrl_c().await;
    }
}
