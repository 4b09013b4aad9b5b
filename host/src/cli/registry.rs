//! `sluice rule push`, `pull`, and `inspect` of a registry reference.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::rules::oci::{self, Described, RegistryOptions, annotation};
use crate::rules::signature;

/// How to reach the registry, shared by the commands that talk to one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry (a registry on loopback, like 127.0.0.1:5000).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name (default: the Docker credential file, else anonymous).
    #[arg(long, value_name = "USER", requires = "password")]
    pub username: Option<String>,
    /// Registry password or token.
    #[arg(long, value_name = "PASSWORD", requires = "username")]
    pub password: Option<String>,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure,
            username: self.username.clone(),
            password: self.password.clone(),
            ..RegistryOptions::default()
        }
    }
}

/// True if `target` names a registry reference rather than a file: `oci://…`, or not an
/// existing path and shaped like `host/repository:tag` or `…@sha256:…`.
pub(crate) fn is_reference(target: &str) -> bool {
    if target.starts_with("oci://") {
        return true;
    }
    if Path::new(target).exists() || target.ends_with(".wasm") {
        return false;
    }
    let (path, pinned) = match target.split_once('@') {
        Some((path, digest)) => (path, digest.starts_with("sha256:")),
        None => (target, false),
    };
    let last = path.rsplit('/').next().unwrap_or(path);
    path.contains('/') && (pinned || last.contains(':'))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// `sluice rule push FILE REF`.
pub(crate) fn push(file: &Path, reference: &str, args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let described = runtime()?.block_on(oci::push(file, reference, &args.options()))?;
    println!("pushed:    {} {}", described.get(annotation::NAME), described.get(annotation::VERSION));
    println!("to:        {}", described.reference);
    println!("digest:    {}", described.digest);
    println!("sha256:    {} (the package file)", described.package_sha256());
    println!("pin it:    rule: oci://{}@{}", without_tag(&described.reference), described.digest);
    Ok(ExitCode::SUCCESS)
}

/// `sluice rule pull REF [--out DIR]`: writes DIR/NAME.wasm. An unsigned package that the
/// registry holds a valid signature of gets that signature in its file (so the copy stays
/// signed for a gateway's `trust:`).
pub(crate) fn pull(reference: &str, out: Option<PathBuf>, args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let pulled = runtime()?.block_on(oci::pull(reference, &args.options()))?;
    let dir = out.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(crate::rules::package::file_name(&pulled.package.manifest.name));
    let wasm = &pulled.package.wasm;
    let own = signature::signature_of(wasm).ok().flatten();
    let checked: Vec<_> = pulled.signatures.iter().map(|(_, d)| (d, d.verify(wasm))).collect();
    let mut bytes = wasm.clone();
    let mut taken = None;
    if own.is_none()
        && let Some((d, Ok(s))) = checked.iter().find(|(_, s)| s.as_ref().is_ok_and(|s| s.valid))
    {
        bytes = signature::embed(wasm, d).map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
        taken = Some(s.clone());
    }
    std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
    println!("pulled:    {} {}", pulled.package.manifest.name, pulled.package.manifest.version);
    println!("from:      {} ({})", pulled.described.reference, pulled.described.digest);
    if let Some(s) = &own {
        let state = if s.valid { "valid" } else { "INVALID: changed after signing" };
        println!("signed:    by {} (key {}), in the file, {state}", s.key.signer, s.key.id());
    }
    print_registry_signatures(&checked);
    if let Some(s) = taken {
        println!("           the signature of {} is now in the file too", s.key.signer);
    }
    println!("wrote:     {}", file.display());
    println!("sha256:    {}", crate::rules::package::sha256_hex(&bytes));
    Ok(ExitCode::SUCCESS)
}

/// `sluice rule sign REF --key KEY`: a signature artifact beside the package in the registry.
pub(crate) fn sign(reference: &str, key: &Path, args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let key = signature::read_key(key, signature::SecretKey::parse)?;
    let signed = runtime()?.block_on(oci::sign(reference, &key, &args.options()))?;
    let public = key.public();
    println!("signed:    {} {} as {} (key {})", signed.name, signed.version, public.signer, public.id());
    println!("package:   {} ({})", signed.described.reference, signed.described.digest);
    println!("signature: {} (an OCI referrer of the package)", signed.digest);
    if !signed.native_referrers {
        println!(
            "           the registry has no referrers API; listed in the tag {}",
            signed.described.digest.replace(':', "-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per registry signature, checked.
fn print_registry_signatures(checked: &[(&signature::Detached, Result<signature::Signed, String>)]) {
    for (d, result) in checked {
        match result {
            Ok(s) if s.valid => {
                println!("signed:    by {} (key {}), registry signature, valid", s.key.signer, s.key.id())
            }
            Ok(s) => println!(
                "signed:    by {} (key {}), registry signature, INVALID: made for other contents",
                s.key.signer,
                s.key.id()
            ),
            Err(e) => println!("signed:    by {}, registry signature, unreadable ({e})", d.signer),
        }
    }
}

/// `sluice rule inspect REF`: what the registry's manifest says; the module is downloaded
/// only when registry signatures are there to check against it.
pub(crate) fn inspect(reference: &str, args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let options = args.options();
    let runtime = runtime()?;
    let (described, signatures, package) = runtime.block_on(oci::describe_signed(reference, &options))?;
    print_described(&described);
    let in_file = !described.get(annotation::SIGNER).is_empty();
    if in_file {
        println!(
            "signed:    by {} (key {}), in the file (checked by `sluice rule pull` and gateways)",
            described.get(annotation::SIGNER),
            described.get(annotation::KEY_ID)
        );
    }
    let wasm = package.as_ref().map_or(&[][..], |p| p.wasm.as_slice());
    let checked: Vec<_> = signatures.iter().map(|(_, d)| (d, d.verify(wasm))).collect();
    print_registry_signatures(&checked);
    if !in_file && signatures.is_empty() {
        println!("signed:    no (sign it with `sluice rule sign {reference} --key KEY.key`)");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_described(d: &Described) {
    println!("reference: {}", d.reference);
    println!("digest:    {}", d.digest);
    println!("size:      {} bytes", d.layer.size);
    println!("sha256:    {}", d.package_sha256());
    println!("name:      {}", d.get(annotation::NAME));
    println!("version:   {}", d.get(annotation::VERSION));
    println!("abi:       {}", d.get(annotation::ABI));
    if !d.get(annotation::LANGUAGE).is_empty() {
        println!("language:  {}", d.get(annotation::LANGUAGE));
    }
    if !d.get(annotation::DESCRIPTION).is_empty() {
        println!("about:     {}", d.get(annotation::DESCRIPTION));
    }
    println!("hooks:     {}", d.get(annotation::HOOKS).replace(',', ", "));
}

/// `registry/repository:tag` without its tag.
fn without_tag(reference: &str) -> &str {
    let last_slash = reference.rfind('/').unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(colon) => &reference[..last_slash + colon],
        None => reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_told_from_files() {
        assert!(is_reference("oci://anything"));
        assert!(is_reference("127.0.0.1:5000/team/senml:0.2.0"));
        assert!(is_reference(&format!("registry.example.com/senml@sha256:{}", "0".repeat(64))));
        assert!(!is_reference("build/senml.wasm"));
        assert!(!is_reference("senml"));
        assert!(!is_reference("builtin:emqx"));
        assert_eq!(without_tag("127.0.0.1:5000/team/senml:0.2.0"), "127.0.0.1:5000/team/senml");
        assert_eq!(without_tag("127.0.0.1:5000/team/senml"), "127.0.0.1:5000/team/senml");
    }
}
