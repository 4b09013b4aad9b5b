//! Start-up wiring: builds the rule chain (and its hot-reload watcher), the broker connection
//! (starting the embedded broker when none is configured), the CoAP listener, the gateway and
//! the admin API (sharing one set of counters), and shuts them down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, Admin, Metrics};
use crate::coap::{EndpointConfig, Event};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::mqtt::{self, ClientConfig, EmbeddedBroker};
use crate::rules::reload::{ReloadStatus, Reloader, start_rules};
use crate::rules::{Chain, Engine};
use crate::transport::{dtls, udp};

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
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The message layer's settings from the `coap:` section.
pub fn endpoint_config(config: &Config) -> EndpointConfig {
    let c = &config.coap;
    EndpointConfig {
        ack_timeout: c.ack_timeout,
        max_retransmit: c.max_retransmit,
        separate_response_after: c.separate_response_after,
        max_dedup_entries: c.max_dedup_entries,
        block_size: c.block_size,
        max_body_size: c.max_body_size,
        max_block_transfers: c.max_block_transfers,
        max_block_memory: c.max_block_memory,
        max_observers: c.max_observers,
        observe_queue: c.observe_queue,
        max_observers_per_peer: c.max_observers_per_peer,
        peer_rate: c.peer_rate,
        peer_burst: c.peer_burst,
        amplification_factor: c.amplification_factor,
        max_verified_peers: c.max_verified_peers,
        verified_for: c.verified_for,
        ..EndpointConfig::default()
    }
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
    // Compiling packages takes milliseconds to seconds: keep it off the async workers.
    let (chain, reloader) = {
        let config = config.clone();
        let path: Option<PathBuf> = config_path.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || start_rules(&config, path.as_deref(), Engine::global()))
            .await
            .context("loading the rule chain")?
            .context("loading the rule chain")?
    };

    let (embedded, broker_url) = if config.mqtt.broker == "embedded" {
        let broker = mqtt::start_embedded(config.mqtt.embedded_bind).context("starting the embedded MQTT broker")?;
        let url = broker.v5_url.clone();
        info!(listen = %broker.listen, "Embedded MQTT broker started.");
        (Some(broker), url)
    } else {
        (None, config.mqtt.broker.clone())
    };
    let client_id =
        config.mqtt.client_id.clone().unwrap_or_else(|| format!("sluice-{}", hex::encode(rand::random::<[u8; 4]>())));
    let (mqtt, mut incoming) = mqtt::connect(ClientConfig {
        url: broker_url.clone(),
        client_id,
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
        keep_alive: config.mqtt.keep_alive,
        queue_capacity: config.mqtt.queue,
        ca_file: config.mqtt.ca_file.clone(),
        publish_properties: embedded.is_none(),
        // A subscribe returns once its retained messages went through `dispatch` below, so
        // the first read of a PubSub value and an Observe registration see them.
        track_processing: true,
        ..ClientConfig::default()
    });
    if !mqtt.wait_connected(Duration::from_secs(5)).await {
        warn!(broker = %broker_url, "The MQTT broker is not reachable yet; requests queue up (then get 5.03) until it is.");
    }

    let metrics = Arc::new(Metrics::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (events_tx, mut events) = mpsc::channel::<Event>(config.coap.request_queue);
    let coaps = if config.dtls.enabled() {
        let mut settings = dtls::Settings::from_config(&config.dtls, shutdown_rx.clone())
            .map_err(anyhow::Error::msg)
            .context("starting CoAP over DTLS")?;
        settings.metrics = metrics.clone();
        settings.socket_buffer = config.coap.socket_buffer;
        let bound = dtls::bind(settings, endpoint_config(&config), events_tx.clone(), shutdown_rx.clone())
            .await
            .with_context(|| format!("binding CoAP over DTLS to {}", config.dtls.bind))?;
        Some(bound)
    } else {
        None
    };
    let (coap_addr, coap, coap_task) = udp::bind(
        config.coap.bind,
        config.coap.socket_buffer,
        endpoint_config(&config),
        events_tx,
        shutdown_rx.clone(),
    )
    .await
    .with_context(|| format!("binding CoAP to {}", config.coap.bind))?;

    let mut gateway = Gateway::new(&config, chain.clone(), mqtt.clone(), coap.clone()).with_metrics(metrics.clone());
    let mut tasks = vec![coap_task];
    let mut coaps_addr = None;
    let mut coaps_handle = None;
    if let Some((addr, handle, task)) = coaps {
        gateway = gateway.with_coaps(handle.clone());
        coaps_handle = Some(handle);
        tasks.push(task);
        coaps_addr = Some(addr);
    }
    let gateway = Arc::new(gateway);
    let handler = inline_handler(gateway.clone());
    coap.dispatch_inline(handler.clone(), config.coap.request_queue);
    if let Some(coaps) = &coaps_handle {
        coaps.dispatch_inline(handler, config.coap.request_queue);
    }

    let mut admin_addr = None;
    if let Some(bind) = config.admin.bind {
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            gateway: gateway.clone(),
            chain: chain.clone(),
            reloads: reloader.status(),
            mqtt: mqtt.clone(),
            coap,
            coaps: coaps_handle,
        });
        // The admin API serves operators, not devices: a port in use must not keep devices
        // offline, so the gateway serves on without it (and says so loudly).
        match admin::bind(bind, admin, shutdown_rx).await {
            Ok((addr, task)) => {
                tasks.push(task);
                tasks.push(admin::count_reloads(metrics.clone(), reloader.status()));
                admin_addr = Some(addr);
            }
            Err(error) => {
                error!(%bind, %error, "Could not serve the admin API; set admin.bind (or --admin-bind) to a free address, or none.")
            }
        }
    }

    let g = gateway.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                // Only until the drivers took the inline handler.
                Event::Request(req) => {
                    tokio::spawn(g.clone().handle_request(req));
                }
                Event::ObserverGone { id, .. } => g.observer_gone(id),
            }
        }
    }));
    let g = gateway.clone();
    let consumer = mqtt.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            g.dispatch(msg);
            consumer.processed();
        }
    }));
    let g = gateway.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            g.tidy().await;
        }
    }));

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
        shutdown,
        tasks,
    })
}

/// The gateway's request handler for the transports' drivers ([`udp::Handle::dispatch_inline`]).
///
/// It runs a request on the driver's task until the request first has to wait and gives the
/// rest back to the driver, which polls it when what it waits for arrives. Most requests never
/// wait (a QoS 0 publish, a refusal, a rule's own answer); none costs a task spawn or a hop
/// through a channel, which were the largest share of the gateway's CPU per message in the
/// profile (BENCHMARKS.md).
///
/// Polling once with a no-op waker and handing the future on is sound: the driver polls it
/// again at once with its own waker, and every future registers the current waker on each poll.
fn inline_handler(gateway: Arc<Gateway>) -> udp::InlineHandler {
    Arc::new(move |request| {
        let mut task: udp::RequestTask = Box::pin(gateway.clone().handle_request(request));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        task.as_mut().poll(&mut cx).is_pending().then_some(task)
    })
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

    /// Stops listening, lets exchanges finish briefly, and disconnects from the broker.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.mqtt.close().await;
        for task in self.tasks {
            task.abort();
        }
        info!("Sluice stopped.");
    }
}
