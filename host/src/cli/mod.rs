//! `sluice rule …`: scaffold, build, pack, inspect and test rule packages.
//!
//! * `new --lang rust|assemblyscript NAME [--dir PARENT] [--sdk PATH]`: a buildable project
//!   from the templates embedded in the binary (`new.rs`).
//! * `build [DIR] [--out FILE]` (DIR: default `.`): compiles the project (cargo or npm), packs `rule.yaml` into the
//!   module, loads the package through the runtime and runs its vectors (`build.rs`).
//! * `pack WASM --manifest rule.yaml [--out FILE]`: packs a module built some other way.
//! * `inspect FILE|REF`: manifest, hooks, imports, sizes, sha256, vectors (`inspect.rs`); of a
//!   registry reference, what its OCI manifest says, without downloading the module.
//! * `push FILE REF`, `pull REF [--out DIR]`: packages in OCI registries (`registry.rs`).
//! * `keygen --signer NAME [--out DIR]`, `sign FILE --key KEY`: Ed25519 signatures (`sign.rs`).
//! * `test [FILE|DIR|builtin:NAME] [--vectors FILE]` (default `.`): runs vectors; exit 1 on a failure.
//!
//! Errors say what failed and the fix; cargo's and npm's own output streams to the terminal.

mod build;
mod inspect;
mod new;
mod registry;
mod sign;
mod trace;

pub use registry::RegistryArgs;
pub use trace::{TraceArgs, run as trace};

use std::path::PathBuf;
use std::process::ExitCode;

/// The `sluice rule` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RuleCommand {
    /// Creates a rule project (PARENT/NAME) that builds as is.
    New {
        /// The project's language.
        #[arg(long, value_name = "rust|assemblyscript")]
        lang: String,
        /// The rule's name: lowercase letters, digits and '-'.
        name: String,
        /// Where to create it (default: the current folder).
        #[arg(long, value_name = "PARENT")]
        dir: Option<PathBuf>,
        /// The SDK to depend on (default: this Sluice checkout's sdk/rust or sdk/assemblyscript).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Builds a rule project into a package and runs its test vectors.
    Build {
        /// The project folder (holds rule.yaml); default the current folder, like `cargo build`.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The package to write (default: DIR/build/NAME.wasm).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Packs a compiled module with the manifest and vectors of a rule.yaml.
    Pack {
        /// The compiled module.
        wasm: PathBuf,
        /// The rule.yaml with the manifest and vectors.
        #[arg(long, value_name = "rule.yaml")]
        manifest: PathBuf,
        /// The package to write (default: NAME.wasm beside WASM).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Shows what a package holds: a file, or a registry reference (read from its OCI
    /// manifest, without downloading the module).
    Inspect {
        /// The package file, or a reference like registry.example.com/team/senml:0.2.0.
        target: String,
        /// How to reach the registry.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pushes a package to an OCI registry (one layer, the manifest as annotations).
    Push {
        /// The package file.
        file: PathBuf,
        /// Where: registry[:port]/repository:tag, e.g. registry.example.com/team/senml:0.2.0.
        reference: String,
        /// How to reach the registry.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Makes a signing key pair: DIR/SIGNER.key (secret) and DIR/SIGNER.pub (for trust.keys).
    Keygen {
        /// Who signs (names the files and shows in `inspect` and the gateway's log), like acme.
        #[arg(long, value_name = "NAME")]
        signer: String,
        /// Where to write the files (default: the current folder).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Signs a package with a key from `keygen`: a file in place (a previous signature is
    /// replaced), or a package in a registry, which gets a signature artifact beside it (OCI
    /// referrer) without being pushed again.
    Sign {
        /// The package file, or a reference like registry.example.com/team/senml:0.2.0.
        target: String,
        /// The secret key file (SIGNER.key).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Write the signed package here instead (files only).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How to reach the registry.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pulls a package from an OCI registry into DIR/NAME.wasm (its digest checked).
    Pull {
        /// registry[:port]/repository:tag or …@sha256:DIGEST.
        reference: String,
        /// The folder to write to (default: the current folder).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// How to reach the registry.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Runs test vectors against a package, a project's build, or a builtin rule.
    Test {
        /// A package file, a project folder, or builtin:NAME; default the current folder.
        #[arg(default_value = ".")]
        target: String,
        /// Vectors to run instead of the package's own (.json list, or a rule.yaml).
        #[arg(long, value_name = "FILE")]
        vectors: Option<PathBuf>,
    },
    /// Times one call of each hook, on the inputs of the rule's vectors: what the rule costs
    /// per request (e.g. `builtin:emqx --vectors rules/emqx/rule.yaml` against
    /// `target/rules/emqx.wasm`).
    Bench {
        /// A package file, a project folder, or builtin:NAME.
        target: String,
        /// Vectors to take the inputs from instead of the package's own.
        #[arg(long, value_name = "FILE")]
        vectors: Option<PathBuf>,
        /// Calls per vector (after 1,000 warm-up calls).
        #[arg(long, default_value_t = 20_000)]
        calls: u32,
    },
}

/// Runs a `sluice rule` subcommand; prints errors with their fix.
pub fn run(command: RuleCommand) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let result = match command {
        RuleCommand::New { lang, name, dir, sdk } => new::run(&lang, &name, dir, sdk),
        RuleCommand::Build { dir, out } => build::build(&dir, out),
        RuleCommand::Pack { wasm, manifest, out } => build::pack(&wasm, &manifest, out),
        RuleCommand::Inspect { target, registry } if registry::is_reference(&target) => {
            registry::inspect(&target, &registry)
        }
        RuleCommand::Inspect { target, .. } => inspect::inspect(std::path::Path::new(&target)),
        RuleCommand::Push { file, reference, registry } => registry::push(&file, &reference, &registry),
        RuleCommand::Pull { reference, out, registry } => registry::pull(&reference, out, &registry),
        RuleCommand::Keygen { signer, out } => sign::keygen(&signer, out),
        RuleCommand::Sign { target, key, out: None, registry } if registry::is_reference(&target) => {
            registry::sign(&target, &key, &registry)
        }
        RuleCommand::Sign { target, key, out, .. } => sign::sign(std::path::Path::new(&target), &key, out),
        RuleCommand::Test { target, vectors } => inspect::test(&target, vectors),
        RuleCommand::Bench { target, vectors, calls } => inspect::bench(&target, vectors, calls),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice rule: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// This Sluice checkout (templates' SDK paths default to it).
fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}
