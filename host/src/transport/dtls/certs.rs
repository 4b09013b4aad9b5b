//! X.509 for DTLS: loading the server's certificate chain and key and the CA that client
//! certificates must chain to, the identity a client certificate proves, and the development
//! certificates of `sluice certs dev`.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use webrtc_dtls::crypto::{Certificate, CryptoPrivateKey};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Reads the PEM certificates of a file (the server's chain, or CA certificates).
pub fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read {} ({e}); give the path of a PEM certificate file", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_slice()).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!(
            "{} holds no certificate; {key} must be a PEM file with -----BEGIN CERTIFICATE-----",
            path.display()
        )),
        Err(e) => Err(format!("{} is not valid PEM ({e}); {key} must be a PEM certificate file", path.display())),
    }
}

/// Reads the server's chain and its private key (PKCS#8 PEM, ECDSA P-256 or Ed25519).
pub fn load_identity(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
    let certificate = load_certs(cert_file, "dtls.cert_file")?;
    let text = std::fs::read_to_string(key_file)
        .map_err(|e| format!("cannot read {} ({e}); give the path of a PEM private key", key_file.display()))?;
    let fix = "use an ECDSA P-256 or Ed25519 key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----); convert one with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`, or make one with `sluice certs dev`";
    let pair =
        KeyPair::from_pem(&text).map_err(|e| format!("{} is not a usable key ({e}); {fix}", key_file.display()))?;
    let private_key = CryptoPrivateKey::from_key_pair(&pair)
        .map_err(|e| format!("{} is not a usable key ({e}); {fix}", key_file.display()))?;
    if matches!(private_key.kind, webrtc_dtls::crypto::CryptoPrivateKeyKind::Rsa256(_)) {
        return Err(format!("{} is an RSA key, which DTLS here cannot use; {fix}", key_file.display()));
    }
    Ok(Certificate { certificate, private_key })
}

/// The CA certificates client certificates must chain to.
pub fn load_roots(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file, "dtls.ca_file")? {
        roots.add(cert).map_err(|e| format!("{}: a CA certificate is not usable ({e})", ca_file.display()))?;
    }
    Ok(roots)
}

/// What a client certificate (DER, the end entity first) says about the device.
pub fn identity(chain: &[Vec<u8>]) -> sluice_sdk::Identity {
    let Some(der) = chain.first() else {
        return sluice_sdk::Identity::default();
    };
    let fingerprint = Some(hex::encode(Sha256::digest(der)));
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return sluice_sdk::Identity { cert_fingerprint: fingerprint, ..Default::default() };
    };
    let subject = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => sans.push(s.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        sans.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        sans.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    sluice_sdk::Identity { psk_identity: None, cert_subject: subject, cert_sans: sans, cert_fingerprint: fingerprint }
}

/// The files `sluice certs dev` writes.
pub const DEV_FILES: [&str; 6] = ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"];

/// Writes a development CA, a server certificate for `localhost` and `127.0.0.1`, and a
/// client certificate with common name `client_cn`, all signed by the CA, as PEM files in
/// `out` (created if missing): see [`DEV_FILES`]. Keys are ECDSA P-256 in PKCS#8.
pub fn write_dev(out: &Path, client_cn: &str) -> Result<(), String> {
    let err = |what: &str, e: rcgen::Error| format!("could not make the {what}: {e}");
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca.distinguished_name.push(DnType::CommonName, "Sluice development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = ca.self_signed(&ca_key).map_err(|e| err("CA", e))?;

    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| err("key", e))?;
        let mut params = CertificateParams::new(names).map_err(|e| err("certificate", e))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(|e| err("certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let server = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
    let client = leaf(Vec::new(), client_cn, ExtendedKeyUsagePurpose::ClientAuth)?;

    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {} ({e})", out.display()))?;
    let files = [ca.pem(), ca_key.serialize_pem(), server.0, server.1, client.0, client.1];
    for (name, text) in DEV_FILES.iter().zip(files) {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {} ({e})", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_load_and_name_the_client() {
        let dir = tempfile::tempdir().unwrap();
        write_dev(dir.path(), "dev1").unwrap();
        let server = load_identity(&dir.path().join("server.crt"), &dir.path().join("server.key")).unwrap();
        assert_eq!(server.certificate.len(), 1);
        load_roots(&dir.path().join("ca.crt")).unwrap();
        let client = load_certs(&dir.path().join("client.crt"), "x").unwrap();
        let id = identity(&[client[0].to_vec()]);
        assert_eq!(id.cert_subject.as_deref(), Some("dev1"));
        assert_eq!(id.cert_fingerprint.as_ref().map(String::len), Some(64));
        let server_id = identity(&[server.certificate[0].to_vec()]);
        assert_eq!(server_id.cert_sans, ["localhost", "127.0.0.1"]);
    }

    #[test]
    fn a_missing_or_wrong_key_file_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        write_dev(dir.path(), "dev1").unwrap();
        let error = load_identity(&dir.path().join("server.crt"), &dir.path().join("server.crt")).unwrap_err();
        assert!(error.contains("PKCS#8"), "{error}");
        let error = load_certs(&dir.path().join("nothing.crt"), "dtls.cert_file").unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
    }
}
