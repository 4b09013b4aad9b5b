//! The gateway's decisions, driven directly: requests handed to [`Gateway::handle_request`]
//! with a [`Link`] whose commands the test reads, the rule chain `builtin:emqx` (anonymous), and
//! the embedded broker (rumqttd, in-process) as the real MQTT side. No CoAP transport: what a
//! driver would send is the [`Command`] the gateway issues.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::Gateway;
use crate::coap::{IncomingRequest, ObserverId, RequestId, Response};
use crate::config::Config;
use crate::mqtt::{self, ClientConfig, EmbeddedBroker, Incoming};
use crate::rules::{Engine, load_chain};
use crate::telemetry::Transport;
use crate::transport::{Command, Link};

const WAIT: Duration = Duration::from_secs(5);

/// One embedded broker for every test of the process (it cannot be stopped).
fn broker() -> &'static EmbeddedBroker {
    static BROKER: OnceLock<EmbeddedBroker> = OnceLock::new();
    BROKER.get_or_init(|| mqtt::start_embedded("127.0.0.1:0".parse().unwrap()).unwrap())
}

/// A client of the embedded broker and the messages it receives.
async fn client(config: &Config) -> (mqtt::Handle, mpsc::Receiver<Incoming>) {
    let client = ClientConfig::from_config(&config.mqtt, broker().v5_url.clone(), true);
    let (handle, incoming) = mqtt::try_connect(client).unwrap();
    assert!(handle.wait_connected(WAIT).await, "the embedded broker accepts clients");
    (handle, incoming)
}

/// A gateway over builtin:emqx (anonymous) and the embedded broker, with its MQTT dispatcher.
async fn gateway() -> Arc<Gateway> {
    let config = Config::zero_config();
    let chain = load_chain(&config, None, Engine::global()).unwrap();
    let (mqtt, mut incoming) = client(&config).await;
    let gateway = Arc::new(Gateway::new(&config, Arc::new(ArcSwap::from_pointee(chain)), mqtt.clone()));
    let g = gateway.clone();
    tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            g.dispatch(msg);
            mqtt.processed();
        }
    });
    gateway
}

/// A request: `method` GET 1, POST 2, PUT 3, DELETE 4; `path_and_query` like `mqtt/a?c=d1`.
fn request(id: u64, method: u8, path_and_query: &str, payload: &[u8]) -> IncomingRequest {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    IncomingRequest {
        id: RequestId(id),
        peer,
        confirmable: true,
        method,
        path: path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        query: query.split('&').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        content_format: None,
        accept: None,
        observe: None,
        max_age: None,
        token: vec![1],
        payload: payload.to_vec(),
        identity: None,
    }
}

/// Hands `request` to the gateway through `link` and returns the answer it sends back.
async fn answer(
    gateway: &Arc<Gateway>,
    link: &Link,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    request: IncomingRequest,
) -> Response {
    let id = request.id;
    let task = tokio::spawn(gateway.clone().handle_request(request, link.clone()));
    let command = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
    match command {
        Command::Respond(answered, response) => {
            assert_eq!(answered, id);
            response
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn class(response: &Response) -> String {
    format!("{}.{:02}", response.code >> 5, response.code & 0x1f)
}

#[tokio::test]
async fn a_con_publish_is_answered_2_04_once_the_broker_has_it() {
    let gateway = gateway().await;
    let (link, mut rx) = Link::channel(Transport::Udp);
    let (watcher, mut seen) = client(&Config::zero_config()).await;
    watcher.subscribe("unit/publish", 1).await.unwrap();
    let response = answer(&gateway, &link, &mut rx, request(1, 3, "mqtt/unit/publish?c=d1", b"21.5")).await;
    assert_eq!(class(&response), "2.04");
    let message = timeout(WAIT, seen.recv()).await.unwrap().unwrap();
    assert_eq!((message.topic.as_str(), &message.payload[..], message.qos), ("unit/publish", &b"21.5"[..], 1));
}

#[tokio::test]
async fn refusals_carry_the_code_of_the_side_that_failed_and_name_the_fix() {
    let gateway = gateway().await;
    let (link, mut rx) = Link::channel(Transport::Udp);
    for (method, path, code) in [
        (3, "nothing/here?c=d1", "4.04"),
        (2, "mqtt/a?c=d1", "4.05"),
        (3, "mqtt/a?", "4.00"),
        (1, "mqtt/a%2B?c=d1", "2.05"),
    ] {
        let response = answer(&gateway, &link, &mut rx, request(2, method, path, b"x")).await;
        assert_eq!(class(&response), code, "{method} {path}: {:?}", String::from_utf8_lossy(&response.payload));
        if code.starts_with('4') {
            assert!(!response.payload.is_empty(), "{path}: a diagnostic");
        }
    }
    // Observe needs Observe=0 on a subscribe route: a GET with Observe=5 is refused.
    let mut odd = request(3, 1, "mqtt/a?c=d1", b"");
    odd.observe = Some(5);
    let response = answer(&gateway, &link, &mut rx, odd).await;
    assert!(response.code >= 0x80, "{response:?}");
}

#[tokio::test]
async fn pubsub_values_are_created_read_and_deleted() {
    let gateway = gateway().await;
    let (link, mut rx) = Link::channel(Transport::Udp);
    let created = answer(&gateway, &link, &mut rx, request(1, 3, "ps/unit/value?c=d1", b"v1")).await;
    assert_eq!(class(&created), "2.01");
    assert_eq!(created.location_path, ["ps", "unit", "value"]);
    let changed = answer(&gateway, &link, &mut rx, request(2, 3, "ps/unit/value?c=d1", b"v2")).await;
    assert_eq!(class(&changed), "2.04");
    let read = answer(&gateway, &link, &mut rx, request(3, 1, "ps/unit/value?c=d1", b"")).await;
    assert_eq!((class(&read).as_str(), &read.payload[..]), ("2.05", &b"v2"[..]));
    let deleted = answer(&gateway, &link, &mut rx, request(4, 4, "ps/unit/value?c=d1", b"")).await;
    assert_eq!(class(&deleted), "2.02");
    let gone = answer(&gateway, &link, &mut rx, request(5, 1, "ps/unit/value?c=d1", b"")).await;
    assert_eq!(class(&gone), "4.04");
}

#[tokio::test]
async fn a_session_token_authenticates_later_requests() {
    let gateway = gateway().await;
    let (link, mut rx) = Link::channel(Transport::Udp);
    let connected = answer(&gateway, &link, &mut rx, request(1, 2, "mqtt/connection?clientid=d7", b"")).await;
    assert_eq!(class(&connected), "2.01");
    assert!(connected.secret, "the token is kept out of logs");
    let token = String::from_utf8(connected.payload).unwrap();
    let path = format!("mqtt/unit/session?clientid=d7&token={token}");
    let published = answer(&gateway, &link, &mut rx, request(2, 3, &path, b"x")).await;
    assert_eq!(class(&published), "2.04");
    let wrong = answer(&gateway, &link, &mut rx, request(3, 3, "mqtt/unit/session?clientid=d7&token=nope", b"x")).await;
    assert_eq!(class(&wrong), "4.01");
    let closed =
        answer(&gateway, &link, &mut rx, request(4, 4, &format!("mqtt/connection?clientid=d7&token={token}"), b""))
            .await;
    assert_eq!(class(&closed), "2.02");
}

/// Registers an Observe of `topic` through `link`, the driver answering with relation `id`.
async fn observe(gateway: &Arc<Gateway>, link: &Link, rx: &mut mpsc::UnboundedReceiver<Command>, topic: &str, id: u64) {
    let mut registration = request(id, 1, &format!("mqtt/{topic}?c=o{id}"), b"");
    registration.observe = Some(0);
    let task = tokio::spawn(gateway.clone().handle_request(registration, link.clone()));
    match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
        Command::RespondObserve(request, response, reply) => {
            assert_eq!((request, response.code, response.observe), (RequestId(id), 0x45, true));
            reply.send(Some(ObserverId(id))).unwrap();
        }
        other => panic!("expected the registration's answer, got {other:?}"),
    }
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn notifications_go_through_the_link_each_observer_came_in_on() {
    let gateway = gateway().await;
    let (udp, mut udp_rx) = Link::channel(Transport::Udp);
    let (dtls, mut dtls_rx) = Link::channel(Transport::Dtls);
    // The same observer id on two drivers: two relations.
    observe(&gateway, &udp, &mut udp_rx, "unit/observed", 9).await;
    observe(&gateway, &dtls, &mut dtls_rx, "unit/observed", 9).await;
    assert_eq!(gateway.observer_count(), 2);
    let (publisher, _) = client(&Config::zero_config()).await;
    publisher.publish(mqtt::Message::new("unit/observed", "n1")).unwrap().await.unwrap();
    for rx in [&mut udp_rx, &mut dtls_rx] {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Command::Notify(id, notification) => {
                assert_eq!((id, &notification.payload[..]), (ObserverId(9), &b"n1"[..]))
            }
            other => panic!("expected a notification, got {other:?}"),
        }
    }
    // The UDP relation ends; the DTLS one with the same id stays.
    gateway.observer_gone(&udp, ObserverId(9));
    assert_eq!(gateway.observer_count(), 1);
    publisher.publish(mqtt::Message::new("unit/observed", "n2")).unwrap().await.unwrap();
    assert!(matches!(timeout(WAIT, dtls_rx.recv()).await.unwrap(), Some(Command::Notify(ObserverId(9), _))));
    assert!(udp_rx.try_recv().is_err(), "nothing for the ended relation");
}

#[tokio::test]
async fn a_thousand_registrations_of_different_filters_do_not_wait_in_line() {
    // Each filter's SUBSCRIBE goes to the broker without waiting for the others' SUBACKs
    // (observe.rs, "Ordering the broker calls"); the time they take is in BENCHMARKS.md.
    let gateway = gateway().await;
    let (link, mut rx) = Link::channel(Transport::Udp);
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let mut registration = request(i, 1, &format!("mqtt/unit/many/{i}?c=m{i}"), b"");
        registration.observe = Some(0);
        tasks.push(tokio::spawn(gateway.clone().handle_request(registration, link.clone())));
    }
    let mut registered = 0;
    while registered < 1000 {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Command::RespondObserve(RequestId(i), _, reply) => {
                reply.send(Some(ObserverId(i))).unwrap();
                registered += 1;
            }
            other => panic!("expected a registration's answer, got {other:?}"),
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(gateway.observer_count(), 1000);
}
