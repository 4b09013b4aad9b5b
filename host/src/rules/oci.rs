//! Rule packages in OCI registries: push, pull and describe them by reference.
//!
//! A package is stored as an OCI artifact any distribution registry keeps (Docker's reference
//! registry, Harbor, GHCR, ECR, Zot…): one manifest whose config blob is the package's
//! manifest as JSON ([`CONFIG_MEDIA_TYPE`]) and whose one layer is the `.wasm` file itself,
//! byte for byte ([`LAYER_MEDIA_TYPE`]). The manifest's annotations repeat what an operator
//! asks first — name, version, ABI, hooks, description — so [`describe`] answers from the
//! manifest alone, without downloading the module. Pulls check the layer's digest (a layer
//! changed in the registry is refused) and then read it as a package, as a file is read.
//!
//! References are the usual `registry[:port]/repository[:tag|@sha256:…]`, optionally written
//! `oci://…`; one without a registry host means Docker Hub. Credentials come from the options
//! (`--username`/`--password`) or the Docker credential file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`, its `auths` entries as `docker login` writes them); none means
//! anonymous. `insecure` speaks plain HTTP to the reference's registry (a registry on loopback).
//!
//! Signatures made after a push ([`sign`]) are OCI 1.1 referrers: a small artifact of type
//! [`SIGNATURE_MEDIA_TYPE`] whose `subject` is the package's manifest and whose one layer is the
//! signature's JSON (the same as a file's signature section, see `rules::signature`). They are
//! found through the registry's referrers API, or, on a registry without it (Docker's reference
//! registry 2.8, GHCR), through the referrers tag schema: an image index tagged
//! `sha256-<digest of the package's manifest>`, which [`sign`] keeps up to date. Pulls and
//! gateways read them with the package ([`Pulled::signatures`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex, OciImageManifest,
    OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::Digest as _;

use super::package::{Package, PackageError};
use super::signature::{Detached, SecretKey};

/// The media type of the layer: the package file.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.sluice.rule.v1+wasm";
/// The media type of the config blob (the package's manifest, JSON); also the artifact type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.sluice.rule.config.v1+json";

/// The artifact type of a signature referrer, and the media type of its one layer.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.sluice.rule.signature.v1+json";
/// The OCI empty descriptor's media type (a signature artifact has no config).
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The largest signature layer read (a signature is about 200 bytes).
const MAX_SIGNATURE_BYTES: i64 = 16 * 1024;
/// The most signature referrers of one package read.
const MAX_SIGNATURES: usize = 32;

/// Annotation keys on the OCI manifest.
pub mod annotation {
    /// The rule's name (the standard OCI title).
    pub const NAME: &str = "org.opencontainers.image.title";
    /// The rule's version.
    pub const VERSION: &str = "org.opencontainers.image.version";
    /// One line about it.
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
    /// The ABI major version it was built for.
    pub const ABI: &str = "dev.sluice.rule.abi";
    /// The hooks it implements, comma-separated.
    pub const HOOKS: &str = "dev.sluice.rule.hooks";
    /// `rust` or `assemblyscript`.
    pub const LANGUAGE: &str = "dev.sluice.rule.language";
    /// Who signed (on a signature artifact, and on a package signed in its file).
    pub const SIGNER: &str = "dev.sluice.signature.signer";
    /// The signing key's id (likewise).
    pub const KEY_ID: &str = "dev.sluice.signature.key";
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS (for a registry on loopback).
    pub insecure: bool,
    /// User name; with `password`, takes the place of the Docker credential file.
    pub username: Option<String>,
    /// Password or token.
    pub password: Option<String>,
    /// The Docker config folder to read credentials from (default `$DOCKER_CONFIG`, else
    /// `~/.docker`).
    pub docker_config: Option<PathBuf>,
    /// The longest a registry operation may take (default 30 s).
    pub timeout: Option<Duration>,
}

/// A package in a registry, described by its OCI manifest.
#[derive(Debug, Clone)]
pub struct Described {
    /// The reference as resolved (`registry/repository:tag`).
    pub reference: String,
    /// The digest of the OCI manifest (`sha256:…`): what `@sha256:` references pin.
    pub digest: String,
    /// The OCI manifest's size in bytes (a referrer's `subject` names it).
    pub size: i64,
    /// The package file's layer.
    pub layer: OciDescriptor,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Described {
    /// The SHA-256 of the package file, lowercase hex (what a config's `sha256:` pins).
    pub fn package_sha256(&self) -> &str {
        self.layer.digest.strip_prefix("sha256:").unwrap_or(&self.layer.digest)
    }

    /// An annotation's value, empty when absent.
    pub fn get(&self, key: &str) -> &str {
        self.annotations.get(key).map_or("", String::as_str)
    }
}

/// A package pulled from a registry.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What the registry says about it.
    pub described: Described,
    /// The package, read and checked.
    pub package: Package,
    /// The signatures attached to it in the registry (not yet checked against it), each with
    /// the digest of its artifact.
    pub signatures: Vec<(String, Detached)>,
}

/// A signature attached to a package in a registry by [`sign`].
#[derive(Debug, Clone)]
pub struct RemoteSigned {
    /// The package signed.
    pub described: Described,
    /// The package's name and version.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The digest of the signature artifact.
    pub digest: String,
    /// True if the registry lists referrers itself; false if the referrers tag was updated.
    pub native_referrers: bool,
}

/// Why a registry operation failed; each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(
        "{reference:?} is not a registry reference ({reason}); write it like registry.example.com/team/senml:0.2.0"
    )]
    Reference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry could not be reached or refused the operation.
    #[error("{reference}: {action}: {error}; {fix}")]
    Registry {
        /// The reference.
        reference: String,
        /// What was being done.
        action: &'static str,
        /// The client's error.
        error: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// The operation took longer than the timeout.
    #[error("{reference}: {action}: no answer within {secs} s; check that the registry is up and reachable")]
    Timeout {
        /// The reference.
        reference: String,
        /// What was being done.
        action: &'static str,
        /// The timeout.
        secs: u64,
    },
    /// The artifact is not a Sluice rule package.
    #[error("{reference}: not a Sluice rule package ({found}); push one with `sluice rule push FILE.wasm {reference}`")]
    NotAPackage {
        /// The reference.
        reference: String,
        /// What it is instead.
        found: String,
    },
    /// The layer is not a valid package.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The Docker credential file is unreadable.
    #[error("{file}: {reason}; fix the file, or give --username and --password")]
    Credentials {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
}

/// Parses a reference, with or without `oci://`.
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    bare.parse::<Reference>()
        .map_err(|e| RegistryError::Reference { reference: text.to_string(), reason: e.to_string() })
}

/// A client for `reference`'s registry.
struct Session {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    timeout: Duration,
}

impl Session {
    fn new(reference: &str, options: &RegistryOptions) -> Result<Session, RegistryError> {
        install_crypto_provider();
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let protocol =
            if options.insecure { ClientProtocol::HttpsExcept(vec![registry.clone()]) } else { ClientProtocol::Https };
        let timeout = options.timeout.unwrap_or(Duration::from_secs(30));
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        };
        let auth = credentials(&registry, options)?;
        Ok(Session { client: Client::new(config), auth, reference, timeout })
    }

    fn name(&self) -> String {
        self.reference.whole()
    }

    /// Runs one registry operation under the timeout, mapping its error to a fix.
    async fn run<T>(
        &self,
        action: &'static str,
        op: impl std::future::Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failed(action, &error)),
            Err(_) => Err(RegistryError::Timeout { reference: self.name(), action, secs: self.timeout.as_secs() }),
        }
    }

    fn failed(&self, action: &'static str, error: &oci_client::errors::OciDistributionError) -> RegistryError {
        let text = error_chain(error);
        let lower = text.to_ascii_lowercase();
        // Words of the registry's and the TLS stack's errors (not bare status numbers, which
        // a port or a digest may contain).
        let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        let fix = if has(&["unauthorized", "not authorized", "authentication required", "denied"]) {
            "log in with `docker login` (the credential file is read; a gateway reads the one in registry.docker_config, default ~/.docker of its user) or give --username and --password"
        } else if has(&["manifest unknown", "name unknown", "not found"]) {
            "check the repository and tag (`sluice rule push` puts a package there)"
        } else if has(&["digest"]) {
            "the registry returned other bytes than the manifest names; the package was changed there: push it again"
        } else if has(&["invalidcontenttype", "corrupt message", "wrong version number", "handshake"]) {
            "for a plain-HTTP registry (on loopback) add --insecure"
        } else if has(&["connect", "refused", "dns"]) {
            "check that the registry is running and the host and port are right; for plain HTTP add --insecure"
        } else {
            "check the reference and the registry"
        };
        RegistryError::Registry { reference: self.name(), action, error: text, fix }
    }

    /// The OCI manifest of the reference and its digest, checked to be a rule package.
    async fn manifest(&self) -> Result<Described, RegistryError> {
        let accepted = [OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE];
        let (raw, digest) = self
            .run("read the manifest", self.client.pull_manifest_raw(&self.reference, &self.auth, &accepted))
            .await?;
        let size = i64::try_from(raw.len()).unwrap_or(i64::MAX);
        let manifest: OciImageManifest = match serde_json::from_slice::<OciImageManifest>(&raw) {
            Ok(m) if m.media_type.as_deref() != Some(OCI_IMAGE_INDEX_MEDIA_TYPE) => m,
            _ => return Err(RegistryError::NotAPackage { reference: self.name(), found: "an image index".into() }),
        };
        if manifest.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(RegistryError::NotAPackage {
                reference: self.name(),
                found: format!("config of type {}", manifest.config.media_type),
            });
        }
        let layer = match manifest.layers.as_slice() {
            [layer] if layer.media_type == LAYER_MEDIA_TYPE => layer.clone(),
            layers => {
                let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
                return Err(RegistryError::NotAPackage {
                    reference: self.name(),
                    found: format!("layers {types:?}, not one {LAYER_MEDIA_TYPE}"),
                });
            }
        };
        Ok(Described {
            reference: self.name(),
            digest,
            size,
            layer,
            annotations: manifest.annotations.unwrap_or_default(),
        })
    }

    /// The same repository at `digest`.
    fn at(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.reference.resolve_registry().to_string(),
            self.reference.repository().to_string(),
            digest.to_string(),
        )
    }

    /// The signature artifacts that name `described` as their subject; `known` (by artifact
    /// digest) are not downloaded again.
    async fn signatures(
        &self,
        described: &Described,
        known: &BTreeMap<String, Detached>,
    ) -> Result<Vec<(String, Detached)>, RegistryError> {
        let subject = self.at(&described.digest);
        self.client.store_auth_if_needed(subject.resolve_registry(), &self.auth).await;
        let index =
            self.run("list the signatures", self.client.pull_referrers(&subject, Some(SIGNATURE_MEDIA_TYPE))).await?;
        let mut found = Vec::new();
        let entries = index.manifests.iter().filter(|e| e.artifact_type.as_deref() == Some(SIGNATURE_MEDIA_TYPE));
        for entry in entries.take(MAX_SIGNATURES) {
            if let Some(signature) = known.get(&entry.digest) {
                found.push((entry.digest.clone(), signature.clone()));
                continue;
            }
            let at = self.at(&entry.digest);
            let (manifest, _) = self.run("read a signature", self.client.pull_manifest(&at, &self.auth)).await?;
            // Not a signature of this package (a referrers tag anyone may write): passed over.
            let OciManifest::Image(manifest) = manifest else { continue };
            if manifest.subject.as_ref().map(|s| s.digest.as_str()) != Some(described.digest.as_str()) {
                continue;
            }
            let Some(layer) = manifest
                .layers
                .iter()
                .find(|l| l.media_type == SIGNATURE_MEDIA_TYPE && (0..=MAX_SIGNATURE_BYTES).contains(&l.size))
            else {
                continue;
            };
            let mut bytes = Vec::new();
            self.run("download a signature", self.client.pull_blob(&at, layer, &mut bytes)).await?;
            if let Ok(signature) = serde_json::from_slice::<Detached>(&bytes) {
                found.push((entry.digest.clone(), signature));
            }
        }
        Ok(found)
    }

    /// Pushes `body` as a blob (the registry skips it when it has it).
    async fn push_blob(&self, body: Vec<u8>) -> Result<OciDescriptor, RegistryError> {
        let digest = sha256_digest(&body);
        let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
        self.run("upload a blob", self.client.push_blob(&self.reference, body, &digest)).await?;
        Ok(OciDescriptor {
            media_type: String::new(),
            digest,
            size,
            urls: None,
            annotations: None,
            artifact_type: None,
        })
    }
}

/// A media type as the client's Content-Type header value.
fn header<H: std::str::FromStr>(media_type: &str) -> Result<H, RegistryError> {
    media_type.parse().map_err(|_| RegistryError::Registry {
        reference: String::new(),
        action: "build a request",
        error: format!("{media_type} is not a header value"),
        fix: "report this",
    })
}

/// `sha256:` and the hex SHA-256 of `bytes`.
fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The error and its sources, in one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The process's rustls crypto provider (ring, as for MQTT over TLS), once.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The credentials for `registry`: the options', else the Docker credential file's, else none.
fn credentials(registry: &str, options: &RegistryOptions) -> Result<RegistryAuth, RegistryError> {
    if let (Some(user), Some(password)) = (&options.username, &options.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    let dir = options
        .docker_config
        .clone()
        .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")));
    let Some(file) = dir.map(|d| d.join("config.json")).filter(|f| f.is_file()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let shown = file.display().to_string();
    let bad = |reason: String| RegistryError::Credentials { file: shown.clone(), reason };
    let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let auths = json.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|auths| {
        auths.iter().find(|(host, _)| {
            let host = host.trim_start_matches("https://").trim_start_matches("http://");
            host.trim_end_matches('/') == registry || host.split('/').next() == Some(registry)
        })
    });
    let Some((_, entry)) = entry else { return Ok(RegistryAuth::Anonymous) };
    let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else {
        return Ok(RegistryAuth::Anonymous); // a credential helper's entry: not read here
    };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("the auth of {registry} is not base64: {e}")))?;
    let pair = String::from_utf8(decoded).map_err(|_| bad(format!("the auth of {registry} is not UTF-8")))?;
    let (user, password) =
        pair.split_once(':').ok_or_else(|| bad(format!("the auth of {registry} is not user:password")))?;
    Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
}

/// The annotations that describe the package on the OCI manifest (its signer too, when the
/// file is signed, so `inspect` shows it without downloading the module).
fn annotations_of(package: &Package) -> BTreeMap<String, String> {
    let manifest = &package.manifest;
    let mut a = BTreeMap::new();
    if let Ok(Some(signed)) = super::signature::signature_of(&package.wasm)
        && signed.valid
    {
        a.insert(annotation::SIGNER.into(), signed.key.signer.clone());
        a.insert(annotation::KEY_ID.into(), signed.key.id());
    }
    a.insert(annotation::NAME.into(), manifest.name.clone());
    a.insert(annotation::VERSION.into(), manifest.version.clone());
    a.insert(annotation::ABI.into(), manifest.abi.to_string());
    a.insert(annotation::HOOKS.into(), manifest.hooks.join(","));
    if !manifest.language.is_empty() {
        a.insert(annotation::LANGUAGE.into(), manifest.language.clone());
    }
    if !manifest.description.is_empty() {
        a.insert(annotation::DESCRIPTION.into(), manifest.description.clone());
    }
    a
}

/// Pushes the package file `path` to `reference`; returns what the registry now holds.
pub async fn push(path: &Path, reference: &str, options: &RegistryOptions) -> Result<Described, RegistryError> {
    let package = Package::read(path)?;
    let session = Session::new(reference, options)?;
    let annotations = annotations_of(&package);
    let config_json = serde_json::to_vec(&package.manifest).unwrap_or_default();
    let config = Config::new(config_json, CONFIG_MEDIA_TYPE.to_string(), None);
    let layer_annotations = BTreeMap::from([(
        "org.opencontainers.image.title".to_string(),
        path.file_name()
            .map_or_else(|| format!("{}.wasm", package.manifest.name), |n| n.to_string_lossy().into_owned()),
    )]);
    let layers = [ImageLayer::new(package.wasm.clone(), LAYER_MEDIA_TYPE.to_string(), Some(layer_annotations))];
    let mut manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    manifest.artifact_type = Some(CONFIG_MEDIA_TYPE.to_string());
    session
        .run("push", session.client.push(&session.reference, &layers, config, &session.auth, Some(manifest)))
        .await?;
    session.manifest().await
}

/// Describes the package at `reference` from its OCI manifest (the module is not downloaded).
pub async fn describe(reference: &str, options: &RegistryOptions) -> Result<Described, RegistryError> {
    Session::new(reference, options)?.manifest().await
}

/// [`describe`], with the signatures attached in the registry and, when there are any, the
/// package they are to be checked against (downloaded only then).
pub async fn describe_signed(
    reference: &str,
    options: &RegistryOptions,
) -> Result<(Described, Vec<(String, Detached)>, Option<Package>), RegistryError> {
    let session = Session::new(reference, options)?;
    let described = session.manifest().await?;
    let signatures = session.signatures(&described, &BTreeMap::new()).await?;
    let package = if signatures.is_empty() { None } else { Some(session.package(&described, None).await?) };
    Ok((described, signatures, package))
}

/// Pulls the package at `reference`: its layer is checked against the manifest's digest, then
/// read as a package.
pub async fn pull(reference: &str, options: &RegistryOptions) -> Result<Pulled, RegistryError> {
    pull_into(reference, options, None, &BTreeMap::new()).await
}

/// [`pull`], taking the layer from `cache` when a file of its digest is there, and the
/// signatures in `known` (by artifact digest) instead of downloading them again.
async fn pull_into(
    reference: &str,
    options: &RegistryOptions,
    cache: Option<&Path>,
    known: &BTreeMap<String, Detached>,
) -> Result<Pulled, RegistryError> {
    let session = Session::new(reference, options)?;
    let described = session.manifest().await?;
    let signatures = session.signatures(&described, known).await?;
    let package = session.package(&described, cache).await?;
    Ok(Pulled { described, package, signatures })
}

impl Session {
    /// The package `described` names: from `cache` when a file of its digest is there, else
    /// downloaded (its digest checked by the client).
    async fn package(&self, described: &Described, cache: Option<&Path>) -> Result<Package, RegistryError> {
        if let Some(cache) = cache {
            let file = cache.join(format!("sha256-{}.wasm", described.package_sha256()));
            if let Ok(wasm) = std::fs::read(&file)
                && super::package::sha256_hex(&wasm) == described.package_sha256()
            {
                return Ok(Package::from_bytes(wasm, &described.reference)?);
            }
        }
        let mut wasm = Vec::with_capacity(usize::try_from(described.layer.size).unwrap_or(0));
        self.run("download the package", self.client.pull_blob(&self.reference, &described.layer, &mut wasm)).await?;
        Ok(Package::from_bytes(wasm, &described.reference)?)
    }
}

/// Signs the package at `reference` with `key` without pushing it again: the signature is
/// pushed as a referrer artifact whose subject is the package's manifest, and listed in the
/// referrers tag when the registry has no referrers API. The package is downloaded (what is
/// signed is its contents) and must be valid.
pub async fn sign(reference: &str, key: &SecretKey, options: &RegistryOptions) -> Result<RemoteSigned, RegistryError> {
    let session = Session::new(reference, options)?;
    let described = session.manifest().await?;
    let package = session.package(&described, None).await?;
    let signature = super::signature::sign_detached(&package.wasm, key)
        .map_err(|error| PackageError::NotWasm { file: described.reference.clone(), error })?;
    session
        .run("log in to push", session.client.auth(&session.reference, &session.auth, RegistryOperation::Push))
        .await?;
    let config = OciDescriptor { media_type: EMPTY_MEDIA_TYPE.into(), ..session.push_blob(b"{}".to_vec()).await? };
    let layer = OciDescriptor {
        media_type: SIGNATURE_MEDIA_TYPE.into(),
        ..session.push_blob(serde_json::to_vec(&signature).unwrap_or_default()).await?
    };
    let public = key.public();
    let annotations = BTreeMap::from([
        (annotation::SIGNER.to_string(), public.signer.clone()),
        (annotation::KEY_ID.to_string(), public.id()),
    ]);
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        config,
        layers: vec![layer],
        subject: Some(OciDescriptor {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            digest: described.digest.clone(),
            size: described.size,
            urls: None,
            annotations: None,
            artifact_type: None,
        }),
        artifact_type: Some(SIGNATURE_MEDIA_TYPE.into()),
        annotations: Some(annotations.clone()),
    };
    let body = serde_json::to_vec(&manifest).unwrap_or_default();
    let digest = sha256_digest(&body);
    let entry = ImageIndexEntry {
        media_type: OCI_IMAGE_MEDIA_TYPE.into(),
        digest: digest.clone(),
        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
        platform: None,
        annotations: Some(annotations),
        artifact_type: Some(SIGNATURE_MEDIA_TYPE.into()),
    };
    let content_type = header(OCI_IMAGE_MEDIA_TYPE)?;
    session
        .run("push the signature", session.client.push_manifest_raw(&session.at(&digest), body, content_type))
        .await?;
    // A registry with the referrers API lists it now; one without it serves the referrers
    // tag instead (read by the same call), which is then written with this signature added.
    let subject = session.at(&described.digest);
    let listed =
        session.run("list the signatures", session.client.pull_referrers(&subject, Some(SIGNATURE_MEDIA_TYPE))).await?;
    let native_referrers = listed.manifests.iter().any(|e| e.digest == digest);
    if !native_referrers {
        let tag = Reference::with_tag(
            session.reference.resolve_registry().to_string(),
            session.reference.repository().to_string(),
            described.digest.replace(':', "-"),
        );
        let mut index = session
            .run("read the referrers tag", session.client.pull_referrers(&subject, None))
            .await
            .unwrap_or_else(|_| OciImageIndex {
                schema_version: 2,
                media_type: None,
                manifests: Vec::new(),
                artifact_type: None,
                annotations: None,
            });
        index.schema_version = 2;
        index.media_type = Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into());
        index.manifests.retain(|e| e.digest != digest);
        index.manifests.push(entry);
        let body = serde_json::to_vec(&index).unwrap_or_default();
        let content_type = header(OCI_IMAGE_INDEX_MEDIA_TYPE)?;
        session.run("update the referrers tag", session.client.push_manifest_raw(&tag, body, content_type)).await?;
    }
    Ok(RemoteSigned {
        described,
        name: package.manifest.name.clone(),
        version: package.manifest.version.clone(),
        digest,
        native_referrers,
    })
}

/// Where a package referenced in a config came from.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The registry answered; the package is now in the cache too.
    Registry {
        /// The OCI manifest's digest.
        digest: String,
    },
    /// The registry did not answer; the cached copy of what the reference last named.
    Cache {
        /// The OCI manifest's digest of the cached copy.
        digest: String,
        /// Why the registry was not used.
        error: String,
    },
}

/// What the cache remembers of a reference.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedRef {
    digest: String,
    sha256: String,
}

/// A package fetched for a gateway by [`fetch_cached`].
#[derive(Debug, Clone)]
pub struct FetchedPackage {
    /// The package file's bytes.
    pub wasm: Vec<u8>,
    /// Its copy in the cache.
    pub file: PathBuf,
    /// Where it came from.
    pub fetched: Fetched,
    /// The signatures attached to it in the registry (kept in the cache with it).
    pub signatures: Vec<Detached>,
}

/// The cache file of the registry signatures of the package file with SHA-256 `sha256`.
fn signatures_file(cache: &Path, sha256: &str) -> PathBuf {
    cache.join(format!("sha256-{sha256}.signatures.json"))
}

fn read_signatures(cache: &Path, sha256: &str) -> BTreeMap<String, Detached> {
    std::fs::read(signatures_file(cache, sha256)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes `bytes` to `file` through a `.part` file, so a reader never sees half of it.
fn write_whole(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let part = file.with_extension("part");
    std::fs::write(&part, bytes).and_then(|()| std::fs::rename(&part, file))
}

/// Pulls `reference` for a gateway: from the registry (kept in `cache` by digest, with its
/// registry signatures), or, when the registry cannot be reached, from `cache` (what the
/// reference named last time). Blocking: the pull runs on a runtime of its own thread, so it
/// may be called from anywhere.
pub fn fetch_cached(reference: &str, options: &RegistryOptions, cache: &Path) -> Result<FetchedPackage, RegistryError> {
    let refs_file = cache.join("refs.json");
    let mut refs: BTreeMap<String, CachedRef> =
        std::fs::read(&refs_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    // The signatures kept for what the reference named last: not downloaded again.
    let known = refs.get(reference).map(|e| read_signatures(cache, &e.sha256)).unwrap_or_default();
    let pulled = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(rt) => rt.block_on(pull_into(reference, options, Some(cache), &known)),
                    Err(e) => Err(RegistryError::Registry {
                        reference: reference.into(),
                        action: "start a runtime",
                        error: e.to_string(),
                        fix: "check the machine's limits",
                    }),
                }
            })
            .join()
            .unwrap_or_else(|_| {
                Err(RegistryError::Registry {
                    reference: reference.into(),
                    action: "pull",
                    error: "the pull panicked".into(),
                    fix: "report this",
                })
            })
    });
    match pulled {
        Ok(pulled) => {
            let sha256 = pulled.package.sha256.clone();
            let file = cache.join(format!("sha256-{sha256}.wasm"));
            let signatures: BTreeMap<String, Detached> = pulled.signatures.into_iter().collect();
            // The cache is a convenience: a gateway that cannot write it still runs the package.
            let written =
                std::fs::create_dir_all(cache).and_then(|()| write_whole(&file, &pulled.package.wasm)).and_then(|()| {
                    write_whole(
                        &signatures_file(cache, &sha256),
                        &serde_json::to_vec_pretty(&signatures).unwrap_or_default(),
                    )
                });
            if let Err(error) = written {
                tracing::warn!(cache = %cache.display(), %error, "Could not keep a pulled rule in the cache; set registry.cache_dir to a writable folder.");
            } else {
                let entry = CachedRef { digest: pulled.described.digest.clone(), sha256 };
                refs.insert(reference.to_string(), entry);
                if let Ok(json) = serde_json::to_vec_pretty(&refs) {
                    let _ = write_whole(&refs_file, &json);
                }
            }
            let digest = pulled.described.digest;
            Ok(FetchedPackage {
                wasm: pulled.package.wasm,
                file,
                fetched: Fetched::Registry { digest },
                signatures: signatures.into_values().collect(),
            })
        }
        // The registry is away (or slow): the copy of last time, if any. A registry that
        // answered with something that is not a valid package is not papered over.
        Err(error @ (RegistryError::Registry { .. } | RegistryError::Timeout { .. })) => {
            let Some(entry) = refs.get(reference) else { return Err(error) };
            let file = cache.join(format!("sha256-{}.wasm", entry.sha256));
            match std::fs::read(&file) {
                Ok(wasm) if super::package::sha256_hex(&wasm) == entry.sha256 => Ok(FetchedPackage {
                    wasm,
                    file,
                    fetched: Fetched::Cache { digest: entry.digest.clone(), error: error.to_string() },
                    signatures: known.into_values().collect(),
                }),
                _ => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_take_an_oci_prefix_a_tag_or_a_digest() {
        let r = parse_reference("oci://127.0.0.1:5000/team/senml:0.2.0").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "team/senml", Some("0.2.0")));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("registry.example.com/acme/senml@{digest}")).unwrap();
        assert_eq!(r.digest(), Some(digest.as_str()));
        let err = parse_reference("oci://Not A Ref").unwrap_err().to_string();
        assert!(err.contains("registry.example.com/team/senml:0.2.0"), "{err}");
    }

    #[test]
    fn credentials_come_from_the_options_then_the_docker_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = RegistryOptions { docker_config: Some(dir.path().into()), ..RegistryOptions::default() };
        assert!(matches!(credentials("r.example:5000", &options).unwrap(), RegistryAuth::Anonymous));
        // user:secret
        let file = r#"{"auths": {"r.example:5000": {"auth": "dXNlcjpzZWNyZXQ="}}}"#;
        std::fs::write(dir.path().join("config.json"), file).unwrap();
        let RegistryAuth::Basic(user, password) = credentials("r.example:5000", &options).unwrap() else { panic!() };
        assert_eq!((user.as_str(), password.as_str()), ("user", "secret"));
        assert!(matches!(credentials("other.example", &options).unwrap(), RegistryAuth::Anonymous));
        let given = RegistryOptions { username: Some("u".into()), password: Some("p".into()), ..options.clone() };
        assert!(matches!(credentials("r.example:5000", &given).unwrap(), RegistryAuth::Basic(u, _) if u == "u"));
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let err = credentials("r.example:5000", &options).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("--username"), "{err}");
    }
}
