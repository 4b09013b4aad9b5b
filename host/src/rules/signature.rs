//! Package signatures: who published a package, checked before it runs.
//!
//! A signature is an Ed25519 signature carried in the package itself, in one more custom section
//! ([`SECTION`], JSON: the signer's name, public key and signature), so that a signed package is
//! still one file — pushed to a registry, its one layer carries the signature too. What is
//! signed is a domain string and the SHA-256 of the package without its signature section, so
//! signing again (another key, a renamed signer) replaces the section and nothing else.
//!
//! The same signature ([`Detached`]) can also live beside a package already in a registry, as
//! an OCI referrer artifact (`sluice rule sign REF`, see `rules::oci`): a second publisher, or a
//! release step, vouches for a package without pushing it again. Because it covers the same
//! message, a pulled package takes it into its file ([`embed`]) and stays signed as a copy.
//!
//! Keys are made by `sluice rule keygen`: `NAME.key` (the secret seed; keep it like a
//! password) and `NAME.pub`, one line `sluice-ed25519 BASE64 NAME` that a gateway's config
//! lists under `trust.keys` (a path to the file, or the line itself). A package whose signature
//! does not match its contents is refused whatever the config says (it was changed after
//! signing); with `trust.keys`, a package signed by another key is refused; with
//! `trust.require_signature`, so is an unsigned one.
//!
//! Why not sigstore/cosign: keyless signing needs Fulcio, Rekor and an OIDC identity provider
//! online at signing and (for the transparency log) at verification time, which a gateway in a
//! plant network or a laptop demo does not have; a cosign key pair would need cosign's own
//! formats and a separate signature artifact that a copied `.wasm` file loses. A signature inside
//! the file survives every way of sharing it (registry, copy, USB stick) and is checked offline
//! with a key the operator chose to trust — the model of signed Linux packages and of minisign.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::module::{ModuleError, append_custom, rebuild, sections};

/// The custom section that carries a package's signature.
pub const SECTION: &str = "sluice.signature";

/// What is signed: this, then the SHA-256 of the package without its signature section.
const DOMAIN: &[u8] = b"sluice rule package signature v1\n";

const PUBLIC_TAG: &str = "sluice-ed25519";
const SECRET_TAG: &str = "sluice-ed25519-secret";

/// A public key and the name of whoever holds its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    /// Who signs with it.
    pub signer: String,
}

impl PublicKey {
    /// Parses `sluice-ed25519 BASE64 NAME` (a `.pub` file's line).
    pub fn parse(line: &str) -> Result<PublicKey, KeyError> {
        let mut words = line.split_whitespace();
        if words.next() != Some(PUBLIC_TAG) {
            return Err(KeyError::Format(format!("a public key starts with {PUBLIC_TAG}")));
        }
        let bytes = decode32(words.next().unwrap_or_default())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| KeyError::Format(format!("not an Ed25519 public key ({e})")))?;
        Ok(PublicKey { key, signer: words.collect::<Vec<_>>().join(" ") })
    }

    /// The `.pub` file's line.
    pub fn line(&self) -> String {
        format!("{PUBLIC_TAG} {} {}", BASE64.encode(self.key.as_bytes()), self.signer)
    }

    /// A short id: the first 8 bytes of the key's SHA-256, hex.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.key.as_bytes())[..8])
    }

    fn same_key(&self, other: &PublicKey) -> bool {
        self.key == other.key
    }
}

/// A secret signing key.
pub struct SecretKey {
    key: ed25519_dalek::SigningKey,
    signer: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("signer", &self.signer).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A new random key for `signer`.
    pub fn generate(signer: &str) -> SecretKey {
        SecretKey { key: ed25519_dalek::SigningKey::from_bytes(&rand::random()), signer: signer.into() }
    }

    /// Parses `sluice-ed25519-secret BASE64 NAME` (a `.key` file's line).
    pub fn parse(line: &str) -> Result<SecretKey, KeyError> {
        let mut words = line.split_whitespace();
        if words.next() != Some(SECRET_TAG) {
            return Err(KeyError::Format(format!(
                "a secret key starts with {SECRET_TAG} (give the .key file, not the .pub)"
            )));
        }
        let seed = decode32(words.next().unwrap_or_default())?;
        Ok(SecretKey { key: ed25519_dalek::SigningKey::from_bytes(&seed), signer: words.collect::<Vec<_>>().join(" ") })
    }

    /// The `.key` file's line.
    pub fn line(&self) -> String {
        format!("{SECRET_TAG} {} {}", BASE64.encode(self.key.to_bytes()), self.signer)
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey { key: self.key.verifying_key(), signer: self.signer.clone() }
    }
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64.decode(text).map_err(|e| KeyError::Format(format!("the key is not base64 ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Format("the key is not 32 bytes".into()))
}

/// A key that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a key line.
    #[error("{0}; make keys with `sluice rule keygen`")]
    Format(String),
    /// The file cannot be read.
    #[error("{file}: {error}; make keys with `sluice rule keygen`")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Reads a key file's first line; `parse` turns it into a key; errors name the file.
pub fn read_key<K>(path: &Path, parse: impl Fn(&str) -> Result<K, KeyError>) -> Result<K, KeyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Io { file: file.clone(), error })?;
    parse(text.lines().next().unwrap_or_default()).map_err(|e| match e {
        KeyError::Format(reason) => KeyError::Format(format!("{file}: {reason}")),
        other => other,
    })
}

/// A signature apart from its package: the JSON of the signature section, and the layer of a
/// registry signature artifact (see `rules::oci`), so one signature moves between the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// Who signed (the key's name).
    pub signer: String,
    /// The public key, base64.
    pub key: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

impl Detached {
    /// Checks this signature against the package `wasm`.
    pub fn verify(&self, wasm: &[u8]) -> Result<Signed, String> {
        let key = PublicKey::parse(&format!("{PUBLIC_TAG} {} {}", self.key, self.signer)).map_err(|e| e.to_string())?;
        let bytes = BASE64.decode(&self.signature).map_err(|e| format!("the signature is not base64 ({e})"))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes).map_err(|e| format!("not a signature ({e})"))?;
        let (_, message) = message(wasm).map_err(|e| e.to_string())?;
        let valid = key.key.verify(&message, &signature).is_ok();
        Ok(Signed { key, valid, in_registry: false })
    }
}

/// A package's signature, checked against its contents.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The key it was made with (and the signer's name).
    pub key: PublicKey,
    /// True if it matches the package's contents.
    pub valid: bool,
    /// True if it came from the registry (a signature artifact), not from the file.
    pub in_registry: bool,
}

impl Signed {
    /// `acme (key 0123…)`, and where it came from when that was the registry.
    pub fn describe(&self) -> String {
        let from = if self.in_registry { ", registry signature" } else { "" };
        format!("{} (key {}{from})", self.key.signer, self.key.id())
    }
}

/// The package without its signature sections, and the message a signature covers.
fn message(wasm: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ModuleError> {
    let kept = sections(wasm)?.into_iter().filter(|s| s.name.as_deref() != Some(SECTION));
    let content = rebuild(wasm, kept);
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(&content));
    Ok((content, message))
}

/// A signature of the package `wasm` (which is not changed).
pub fn sign_detached(wasm: &[u8], key: &SecretKey) -> Result<Detached, ModuleError> {
    let (_, message) = message(wasm)?;
    Ok(Detached {
        signer: key.signer.clone(),
        key: BASE64.encode(key.key.verifying_key().as_bytes()),
        signature: BASE64.encode(key.key.sign(&message).to_bytes()),
    })
}

/// The package `wasm` carrying `signature` in its signature section (a previous one replaced).
pub fn embed(wasm: &[u8], signature: &Detached) -> Result<Vec<u8>, ModuleError> {
    let (mut out, _) = message(wasm)?;
    append_custom(&mut out, SECTION, &serde_json::to_vec(signature).unwrap_or_default());
    Ok(out)
}

/// Signs a package: the same file with its signature section (a previous one replaced).
pub fn sign(wasm: &[u8], key: &SecretKey) -> Result<Vec<u8>, ModuleError> {
    embed(wasm, &sign_detached(wasm, key)?)
}

/// The signature of a package, if it has one: `Err` when the section is there but unreadable
/// (which counts as a signature that does not match).
pub fn signature_of(wasm: &[u8]) -> Result<Option<Signed>, String> {
    let found = sections(wasm).map_err(|e| e.to_string())?;
    let Some(section) = found.iter().rev().find(|s| s.name.as_deref() == Some(SECTION)) else {
        return Ok(None);
    };
    let stored: Detached = serde_json::from_slice(wasm.get(section.payload.clone()).unwrap_or_default())
        .map_err(|e| format!("the signature section is not readable ({e})"))?;
    stored.verify(wasm).map(Some)
}

/// Which packages a gateway runs: `trust:` in the config.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The keys whose signatures are accepted; empty: any valid signature (or none).
    pub keys: Vec<PublicKey>,
    /// Unsigned packages are refused.
    pub require_signature: bool,
}

/// Why a package is not trusted; each message ends with the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The signature does not match the contents.
    #[error(
        "{file}: its signature ({signer}) does not match its contents: the package was changed after it was signed; get it again from its publisher, or sign it again with `sluice rule sign`"
    )]
    Tampered {
        /// The package.
        file: String,
        /// Who it claims to be from.
        signer: String,
    },
    /// Signed, but not by a trusted key.
    #[error(
        "{file}: signed by {signer} (key {id}), which trust.keys does not list; if you trust that publisher, add its public key ({line}) to trust.keys"
    )]
    Untrusted {
        /// The package.
        file: String,
        /// Who signed it.
        signer: String,
        /// The key's id.
        id: String,
        /// The key's `.pub` line.
        line: String,
    },
    /// Unsigned under `require_signature`.
    #[error(
        "{file}: not signed, and trust.require_signature is on; sign it with `sluice rule sign {file} --key KEY.key` (keys from `sluice rule keygen`), or set trust.require_signature: false"
    )]
    Unsigned {
        /// The package.
        file: String,
    },
}

impl Trust {
    /// Checks the package `wasm` (named `file` in errors), signed in its file and/or by the
    /// registry's signature artifacts (`registry`); returns the signature that vouches for it.
    /// A registry signature that does not match is passed over (anyone who may push to the
    /// repository can attach one; it proves nothing either way); one in the file that does not
    /// match means the file was changed and refuses it.
    pub fn check(&self, wasm: &[u8], file: &str, registry: &[Detached]) -> Result<Option<Signed>, TrustError> {
        let own = match signature_of(wasm) {
            Ok(own) => own,
            Err(_) => return Err(TrustError::Tampered { file: file.into(), signer: "unreadable".into() }),
        };
        if let Some(s) = own.as_ref().filter(|s| !s.valid) {
            return Err(TrustError::Tampered { file: file.into(), signer: s.key.signer.clone() });
        }
        let attached = registry
            .iter()
            .filter_map(|d| d.verify(wasm).ok())
            .filter(|s| s.valid)
            .map(|s| Signed { in_registry: true, ..s });
        let all: Vec<Signed> = own.into_iter().chain(attached).collect();
        let Some(first) = all.first() else {
            return if self.require_signature { Err(TrustError::Unsigned { file: file.into() }) } else { Ok(None) };
        };
        if self.keys.is_empty() {
            return Ok(Some(first.clone()));
        }
        match all.iter().find(|s| self.keys.iter().any(|k| k.same_key(&s.key))) {
            Some(trusted) => Ok(Some(trusted.clone())),
            None => Err(TrustError::Untrusted {
                file: file.into(),
                signer: first.key.signer.clone(),
                id: first.key.id(),
                line: first.key.line(),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The smallest module, with one custom section standing in for a manifest.
    fn module() -> Vec<u8> {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        append_custom(&mut wasm, "sluice.manifest", b"{}");
        wasm
    }

    #[test]
    fn a_signed_package_verifies_and_any_change_breaks_it() {
        let key = SecretKey::generate("acme");
        let signed = sign(&module(), &key).unwrap();
        let found = signature_of(&signed).unwrap().unwrap();
        assert!(found.valid);
        assert_eq!(found.key, key.public());
        assert_eq!(found.key.signer, "acme");
        // Signing again replaces the signature, it does not add one.
        let other = SecretKey::generate("other");
        let resigned = sign(&signed, &other).unwrap();
        assert_eq!(resigned.len(), signed.len() - "acme".len() + "other".len());
        assert_eq!(signature_of(&resigned).unwrap().unwrap().key, other.public());
        // A byte of the contents changed after signing.
        let mut tampered = signed.clone();
        tampered[10] ^= 1;
        assert!(!signature_of(&tampered).unwrap().unwrap().valid);
        assert_eq!(signature_of(&module()).unwrap().map(|s| s.valid), None);
    }

    #[test]
    fn a_registry_signature_vouches_for_the_package_it_was_made_for() {
        let acme = SecretKey::generate("acme");
        let mallory = SecretKey::generate("mallory");
        let strict = Trust { keys: vec![acme.public()], require_signature: true };
        let by_acme = sign_detached(&module(), &acme).unwrap();
        let found = strict.check(&module(), "r", std::slice::from_ref(&by_acme)).unwrap().unwrap();
        assert!(found.valid && found.in_registry && found.key == acme.public());
        assert!(found.describe().contains("registry signature"), "{}", found.describe());
        // The trusted one is found among others.
        let by_mallory = sign_detached(&module(), &mallory).unwrap();
        let found = strict.check(&module(), "r", &[by_mallory.clone(), by_acme.clone()]).unwrap().unwrap();
        assert_eq!(found.key, acme.public());
        let err = strict.check(&module(), "r", std::slice::from_ref(&by_mallory)).unwrap_err().to_string();
        assert!(err.contains("signed by mallory"), "{err}");
        // A signature made for other contents proves nothing: the package is unsigned.
        let mut other = module();
        append_custom(&mut other, "x", b"1");
        let wrong = sign_detached(&other, &acme).unwrap();
        let err = strict.check(&module(), "r", &[wrong]).unwrap_err().to_string();
        assert!(err.contains("not signed"), "{err}");
        // Taken into the file, it is the file's signature.
        let embedded = embed(&module(), &by_acme).unwrap();
        let own = signature_of(&embedded).unwrap().unwrap();
        assert!(own.valid && !own.in_registry);
        assert_eq!(embedded, sign(&module(), &acme).unwrap());
    }

    #[test]
    fn keys_round_trip_through_their_lines() {
        let key = SecretKey::generate("Acme Corp");
        let again = SecretKey::parse(&key.line()).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(PublicKey::parse(&key.public().line()).unwrap(), key.public());
        let err = SecretKey::parse(&key.public().line()).unwrap_err().to_string();
        assert!(err.contains("not the .pub") && err.contains("sluice rule keygen"), "{err}");
        assert!(PublicKey::parse("sluice-ed25519 AAAA x").is_err());
        assert_eq!(key.public().id().len(), 16);
    }

    #[test]
    fn trust_refuses_tampered_untrusted_and_under_require_unsigned_packages() {
        let acme = SecretKey::generate("acme");
        let mallory = SecretKey::generate("mallory");
        let by_acme = sign(&module(), &acme).unwrap();
        let by_mallory = sign(&module(), &mallory).unwrap();
        let open = Trust::default();
        assert!(open.check(&module(), "a.wasm", &[]).unwrap().is_none());
        assert!(open.check(&by_mallory, "a.wasm", &[]).unwrap().is_some());
        let mut tampered = by_acme.clone();
        tampered[10] ^= 1;
        let err = open.check(&tampered, "a.wasm", &[]).unwrap_err().to_string();
        assert!(err.contains("changed after it was signed"), "{err}");

        let strict = Trust { keys: vec![acme.public()], require_signature: true };
        assert!(strict.check(&by_acme, "a.wasm", &[]).unwrap().unwrap().valid);
        let err = strict.check(&by_mallory, "m.wasm", &[]).unwrap_err().to_string();
        assert!(err.contains("signed by mallory") && err.contains(&mallory.public().line()), "{err}");
        let err = strict.check(&module(), "u.wasm", &[]).unwrap_err().to_string();
        assert!(err.contains("not signed") && err.contains("sluice rule sign u.wasm"), "{err}");
    }
}
