//! Broker URLs and the byte stream to the broker: TCP (`mqtt://`) or TLS over TCP (`mqtts://`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A broker configuration that cannot work; reported before the client starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("invalid MQTT broker URL {url:?}: {reason}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA file could not be read or parsed.
    #[error("cannot load the MQTT CA file {path}: {reason}")]
    CaFile {
        /// The configured path.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// Neither a CA file nor any system root certificate is available.
    #[error("no trusted root certificates for mqtts:// (set a CA file)")]
    NoRoots,
    /// A setting is out of range.
    #[error("invalid MQTT client setting: {0}")]
    Invalid(&'static str),
    /// The client's thread or its runtime could not be started.
    #[error("cannot start the MQTT client's thread: {0}")]
    Thread(String),
}

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// Host name or IP address, without brackets.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// Present for `mqtts://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A connected byte stream to the broker.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Splits `mqtt[s]://host[:port]` into (tls, host, port).
pub(crate) fn parse_url(url: &str) -> Result<(bool, String, u16), ConfigError> {
    let bad = |reason| ConfigError::Url { url: url.to_owned(), reason };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("the scheme must be mqtt:// or mqtts://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') {
        return Err(bad("a path or query is not allowed"));
    }
    if authority.contains('@') {
        return Err(bad("put credentials in username and password, not the URL"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        None if tls => 8883,
        None => 1883,
    };
    Ok((tls, host.to_owned(), port))
}

impl Endpoint {
    /// Resolves the URL and, for `mqtts://`, loads the trusted roots.
    pub(crate) fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, ConfigError> {
        let (tls, host, port) = parse_url(url)?;
        let tls = if tls {
            let name = ServerName::try_from(host.clone()).map_err(|_| ConfigError::Url {
                url: url.to_owned(),
                reason: "the host is not a valid TLS server name",
            })?;
            Some((connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Self { host, port, tls })
    }

    /// Opens a TCP connection (TCP_NODELAY) and, for `mqtts://`, completes the TLS handshake.
    pub(crate) async fn open(&self) -> io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => Ok(Box::new(connector.connect(name.clone(), tcp).await?)),
        }
    }
}

fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, ConfigError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_error = |reason: String| ConfigError::CaFile { path: path.to_owned(), reason };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificates in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(ConfigError::NoRoots);
            }
        }
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_their_port_by_scheme() {
        let parsed = parse_url("mqtt://broker.local").unwrap();
        assert_eq!(parsed, (false, "broker.local".into(), 1883));
        let parsed = parse_url("mqtts://broker.local/").unwrap();
        assert_eq!(parsed, (true, "broker.local".into(), 8883));
        let parsed = parse_url("mqtt://[::1]:1884").unwrap();
        assert_eq!(parsed, (false, "::1".into(), 1884));
    }

    #[test]
    fn urls_with_paths_credentials_or_other_schemes_are_refused() {
        for url in ["http://h", "mqtt://h/x", "mqtt://u:p@h", "mqtt://:1883", "mqtt://h:port"] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = Endpoint::new("mqtts://localhost", Some(file.path())).err();
        assert!(matches!(err, Some(ConfigError::CaFile { .. })));
    }
}
