//! Start-up wiring and shutdown, in the order they happen:
//!
//! 1. [`check::prepare`] builds everything the configuration describes (the rule chain, the
//!    DTLS keys, the MQTT client's options), exactly as `sluice check` does; any problem stops
//!    the start with every problem listed.
//! 2. The broker connection ([`start_mqtt`]; the embedded broker first when none is
//!    configured), then the gateway over it.
//! 3. The CoAP transports, bound with the gateway as their service ([`bind_transports`]).
//! 4. The admin API and the background tasks ([`spawn_background`]).
//!
//! [`Server::shutdown`] undoes it: the signal fires; the CoAP drivers drain (they answer what
//! is in flight within `coap.drain_timeout`, and 5.03 to anything else) and end; the MQTT
//! connection writes what is queued and a DISCONNECT; every other task ends on the signal and
//! is joined. No sleeps, no `abort`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, Admin};
use crate::check::{self, Prepared};
use crate::coap::EndpointConfig;
use crate::config::{Broker, Config};
use crate::gateway::Gateway;
use crate::mqtt::{self, ClientConfig, EmbeddedBroker, Incoming};
use crate::rules::reload::{ReloadStatus, Reloader};
use crate::rules::{Chain, Engine};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::telemetry::Metrics;
use crate::transport::{Link, Serving, dtls, udp};

/// A running gateway.
pub struct Server {
    /// Where CoAP is served (the bound address: port 0 in the config gives a real port here).
    pub coap_addr: SocketAddr,
    /// Where CoAP over DTLS is served, when `dtls:` names credentials (the bound address).
    pub coaps_addr: Option<SocketAddr>,
    /// Where the admin HTTP API is served (the bound address), unless `admin.bind` is `none`
    /// or its address could not be bound.
    pub admin_addr: Option<SocketAddr>,
    /// The broker the gateway publishes to.
    pub broker_url: String,
    /// The embedded broker, when it runs.
    pub embedded: Option<EmbeddedBroker>,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    chain: Arc<ArcSwap<Chain>>,
    reloader: Reloader,
    mqtt: mqtt::Handle,
    trigger: Trigger,
    /// The CoAP drivers: joined first, as they drain.
    drivers: Vec<JoinHandle<()>>,
    /// Everything else: each ends on the signal, or when the MQTT connection closes.
    tasks: Vec<JoinHandle<()>>,
}

/// The CoAP transports once bound.
struct Transports {
    coap_addr: SocketAddr,
    /// One per UDP driver (`coap.drivers`).
    coap: Vec<Link>,
    coaps: Option<(SocketAddr, Link)>,
    drivers: Vec<JoinHandle<()>>,
}

/// Starts everything with no config file behind `config` (paths in it are relative to the
/// working directory, and only the rules folder is watched); returns once CoAP is listening.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    start_from(config, None).await
}

/// Starts everything; returns once CoAP is listening. `config_path` is the file `config` was
/// read from (command-line overrides applied on top): relative paths in it are relative to its
/// folder, and it is watched and re-read on change or [`Server::reload_rules`] (SIGHUP).
pub async fn start_from(config: Config, config_path: Option<&Path>) -> anyhow::Result<Server> {
    let (trigger, shutdown) = shutdown::channel();
    let Prepared { chain, dtls, mqtt: client } = prepare(&config, config_path, &shutdown).await?;
    let chain = Arc::new(ArcSwap::from_pointee(chain));
    let path = config_path.map(Path::to_path_buf);
    let reloader =
        Reloader::start(path, config.clone(), chain.clone(), Engine::global().clone()).context("watching the rules")?;
    for rule in chain.load().rules() {
        let sha256 = rule.sha256.as_deref().unwrap_or("");
        let signer = rule.signer.as_deref().unwrap_or("");
        info!(rule = %rule.name, version = %rule.version, sha256, signer, "Rule loaded.");
    }

    let (embedded, mqtt, incoming) = start_mqtt(&config, client).await?;
    let broker_url = embedded.as_ref().map_or_else(|| config.mqtt.broker.to_string(), |b| b.v5_url.clone());
    let metrics = Arc::new(Metrics::default());
    let gateway = Arc::new(Gateway::new(&config, chain.clone(), mqtt.clone()).with_metrics(metrics.clone()));
    let serving = Serving {
        service: gateway.service(),
        request_queue: config.coap.request_queue,
        drain_timeout: config.coap.drain_timeout,
        retry_after: config.mqtt.retry_after,
    };
    let transports = bind_transports(&config, dtls, serving, &shutdown, &metrics).await?;
    let coap_addr = transports.coap_addr;
    let coaps_addr = transports.coaps.as_ref().map(|(addr, _)| *addr);

    let admin = Admin {
        metrics: metrics.clone(),
        gateway: gateway.clone(),
        chain: chain.clone(),
        reloads: reloader.status(),
        mqtt: mqtt.clone(),
        coap: transports.coap.clone(),
        coaps: transports.coaps.map(|(_, link)| link),
        reload: Some(reloader.trigger()),
        config: config.redacted_json(),
        token: config.admin.token().map(str::to_string),
        started: std::time::Instant::now(),
        read_only: config.admin.open_beyond_loopback(),
    };
    if config.admin.open_beyond_loopback() {
        warn!(bind = ?config.admin.bind, "The admin API listens beyond loopback without admin.token: it serves /healthz, /metrics, /rules and /overview only; set admin.token (or admin.token_file) to list, trace or end devices, reload rules or read the config there.");
    }
    let (admin_addr, tasks) = spawn_background(&config, admin, incoming, &shutdown).await;
    // Devices are served from here on; a broker that is not there yet is reported, and what
    // needs it waits for it (`mqtt.publish_timeout`, then 5.03 with Max-Age).
    if !mqtt.wait_connected(Duration::from_secs(5)).await {
        warn!(broker = %broker_url, "The MQTT broker is not reachable yet; CoAP is served, and requests that need the broker wait for it (then get 5.03) until it is.");
    }

    let admin = admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    match coaps_addr {
        Some(coaps) => info!(coap = %coap_addr, %coaps, broker = %broker_url, %admin, "Sluice is serving."),
        None => info!(coap = %coap_addr, broker = %broker_url, %admin, "Sluice is serving."),
    }
    Ok(Server {
        coap_addr,
        coaps_addr,
        admin_addr,
        broker_url,
        embedded,
        gateway,
        metrics,
        chain,
        reloader,
        mqtt,
        trigger,
        drivers: transports.drivers,
        tasks,
    })
}

/// Step 1: [`check::prepare`], off the async workers (compiling packages takes milliseconds
/// to seconds).
async fn prepare(config: &Config, config_path: Option<&Path>, shutdown: &Shutdown) -> anyhow::Result<Prepared> {
    let config = config.clone();
    let file = config_path.map_or_else(|| "the configuration".to_string(), |p| p.display().to_string());
    let config_dir = config_path.and_then(check::config_dir);
    let shutdown = shutdown.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        check::prepare(&config, &file, config_dir.as_deref(), Engine::global(), &shutdown)
    })
    .await
    .context("loading the configuration")?;
    prepared.map_err(|problems| anyhow::anyhow!("{problems}\n{} problem(s) found.", problems.0.len()))
}

/// Step 2: the broker connection, starting the embedded broker first when it is the broker.
async fn start_mqtt(
    config: &Config,
    mut client: ClientConfig,
) -> anyhow::Result<(Option<EmbeddedBroker>, mqtt::Handle, mpsc::Receiver<Incoming>)> {
    let embedded = match config.mqtt.broker {
        Broker::Embedded => {
            let broker =
                mqtt::start_embedded(config.mqtt.embedded_bind).context("starting the embedded MQTT broker")?;
            info!(listen = %broker.listen, "Embedded MQTT broker started.");
            client.url = broker.v5_url.clone();
            Some(broker)
        }
        Broker::Url(_) => None,
    };
    // Not waited for here: the CoAP port opens at once (step 3) and requests wait for the
    // connection (then get 5.03); `start_from` waits a little before it says it serves.
    let (mqtt, incoming) = mqtt::try_connect(client).context("mqtt.broker")?;
    Ok((embedded, mqtt, incoming))
}

/// Step 3: the CoAP transports (UDP, and DTLS when configured), serving with `serving`.
async fn bind_transports(
    config: &Config,
    dtls: Option<dtls::Settings>,
    serving: Serving,
    shutdown: &Shutdown,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Transports> {
    let endpoint = EndpointConfig::from_config(&config.coap);
    let mut drivers = Vec::new();
    let coaps = match dtls {
        Some(mut settings) => {
            settings.metrics = metrics.clone();
            settings.socket_buffer = config.coap.socket_buffer;
            let (addr, link, task) = dtls::bind(settings, endpoint.clone(), serving.clone(), shutdown.clone())
                .await
                .with_context(|| format!("binding CoAP over DTLS to {}", config.dtls.bind))?;
            drivers.push(task);
            Some((addr, link))
        }
        None => None,
    };
    let c = &config.coap;
    let udp = udp::bind(c.bind, c.drivers, c.socket_buffer, endpoint, serving, shutdown.clone())
        .await
        .with_context(|| format!("binding CoAP to {}", config.coap.bind))?;
    drivers.extend(udp.tasks);
    Ok(Transports { coap_addr: udp.local, coap: udp.links, coaps, drivers })
}

/// Step 4: the admin API (if `admin.bind` is set), the MQTT dispatcher, the janitor and the
/// reload counter. Returns the admin API's address and the tasks.
async fn spawn_background(
    config: &Config,
    admin: Admin,
    mut incoming: mpsc::Receiver<Incoming>,
    shutdown: &Shutdown,
) -> (Option<SocketAddr>, Vec<JoinHandle<()>>) {
    let (gateway, mqtt, metrics, reloads) =
        (admin.gateway.clone(), admin.mqtt.clone(), admin.metrics.clone(), admin.reloads.clone());
    let mut tasks = Vec::new();
    let mut admin_addr = None;
    if let Some(bind) = config.admin.bind {
        // The admin API serves operators, not devices: a port in use must not keep devices
        // offline, so the gateway serves on without it (and says so loudly).
        match admin::bind(bind, Arc::new(admin), shutdown.watch()).await {
            Ok((addr, task)) => {
                tasks.push(task);
                tasks.push(admin::count_reloads(metrics, reloads, shutdown.clone()));
                admin_addr = Some(addr);
            }
            Err(error) => {
                error!(%bind, %error, "Could not serve the admin API; set admin.bind (or --admin-bind) to a free address, or none.")
            }
        }
    }
    // Ends when the MQTT connection is closed (the last step of a shutdown).
    let g = gateway.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            g.dispatch(msg);
            mqtt.processed();
        }
    }));
    // Signed session tokens: the other gateways' revocations (a no-op without a secret).
    let g = gateway.clone();
    tasks.push(tokio::spawn(async move { g.follow_sessions().await }));
    let mut stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = stop.signalled() => break,
                _ = tick.tick() => gateway.tidy().await,
            }
        }
    }));
    (admin_addr, tasks)
}

impl Server {
    /// The gateway (for inspection in tests).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The counters the admin API serves.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live rule chain (swapped as a whole on reload).
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    /// Re-reads the config file and every rule package now, as on SIGHUP: changed packages are
    /// tested aside and swapped in; anything refused leaves the serving version in place.
    pub fn reload_rules(&self) {
        self.reloader.reload_now();
    }

    /// The outcome of the latest reload; `changed().await` on it waits for the next one.
    pub fn rules_status(&self) -> watch::Receiver<ReloadStatus> {
        self.reloader.status()
    }

    /// Stops gracefully (see the module doc): every request in flight is answered, what is
    /// queued for the broker is written, then the connection closes.
    pub async fn shutdown(self) {
        info!("Shutting down: answering the requests in progress, refusing new ones.");
        self.trigger.fire();
        for driver in self.drivers {
            let _ = driver.await;
        }
        self.mqtt.close().await;
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.reloader);
        info!("Sluice stopped.");
    }
}
