//! `sluice run` as a process, the way a user starts it: with no config file or with one, on
//! ephemeral ports, its log in a file the test reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::free_tcp_port;

/// A free loopback UDP port (the socket is closed again at once).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `sluice run`; killed when dropped.
pub struct Sluice {
    child: tokio::process::Child,
    pub coap: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Sluice {
    /// Starts `sluice run --coap-bind … --admin-bind … --mqtt mqtt://127.0.0.1:BROKER_PORT`,
    /// with `config` written to `sluice.yaml` in a fresh folder (and `files` beside it) or
    /// with no config file; returns once `until` is in its log.
    pub async fn start(broker_port: u16, config: Option<&str>, files: &[(&str, &str)], until: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let coap = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let log = dir.path().join("sluice.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("run");
        if let Some(config) = config {
            let file = dir.path().join("sluice.yaml");
            std::fs::write(&file, config).unwrap();
            command.args(["--config", file.to_str().unwrap()]);
        }
        command
            .args(["--coap-bind", &coap.to_string(), "--admin-bind", &admin.to_string()])
            .args(["--mqtt", &format!("mqtt://127.0.0.1:{broker_port}")])
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        let child = command.spawn().unwrap();
        let mut sluice = Sluice { child, coap, admin, dir, log };
        sluice.wait_for(until, Duration::from_secs(20)).await;
        sluice
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `text` is in the log (panics after `within`, or if it exits).
    pub async fn wait_for(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sluice run exited ({status}):\n{}", self.log());
            }
            if self.log().contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `coap://127.0.0.1:PORT/PATH_AND_QUERY`
    pub fn url(&self, path: &str) -> String {
        format!("coap://{}/{}", self.coap, path)
    }
}
