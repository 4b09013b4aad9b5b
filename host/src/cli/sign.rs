//! `sluice rule keygen` and `sluice rule sign`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::rules::package::Package;
use crate::rules::signature::{self, SecretKey, read_key};

/// `sluice rule keygen --signer NAME [--out DIR]`: DIR/NAME.key and DIR/NAME.pub.
pub(crate) fn keygen(signer: &str, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let valid = !signer.is_empty()
        && signer.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !signer.starts_with('.');
    if !valid {
        bail!("--signer {signer:?}: use letters, digits, '-', '_' and '.' (it names the key files), like acme");
    }
    let dir = out.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (secret_file, public_file) = (dir.join(format!("{signer}.key")), dir.join(format!("{signer}.pub")));
    if secret_file.exists() {
        bail!("{} exists; keep it, or remove it first to make a new key", secret_file.display());
    }
    let key = SecretKey::generate(signer);
    write_secret(&secret_file, &format!("{}\n", key.line()))?;
    std::fs::write(&public_file, format!("{}\n", key.public().line()))
        .with_context(|| format!("writing {}", public_file.display()))?;
    println!("secret key: {} (keep it private: it signs as {signer})", secret_file.display());
    println!("public key: {} (give it to the gateways: trust.keys)", public_file.display());
    println!("key id:     {}", key.public().id());
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `sluice rule sign FILE --key KEY.key [--out FILE]` (in place by default).
pub(crate) fn sign(file: &Path, key: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let package = Package::read(file)?;
    let key = read_key(key, SecretKey::parse)?;
    let signed = signature::sign(&package.wasm, &key).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let out = out.unwrap_or_else(|| file.to_path_buf());
    let tmp = out.with_extension("wasm.part");
    std::fs::write(&tmp, &signed).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    let public = key.public();
    println!(
        "signed:    {} {} as {} (key {})",
        package.manifest.name,
        package.manifest.version,
        public.signer,
        public.id()
    );
    println!("wrote:     {}", out.display());
    println!("sha256:    {}", crate::rules::package::sha256_hex(&signed));
    Ok(ExitCode::SUCCESS)
}
