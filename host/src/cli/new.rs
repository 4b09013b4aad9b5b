//! `sluice rule new`: a rule project from the templates embedded in the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::rules::source::Language;

/// A template file: its path in the project, and its text with `{{placeholders}}`.
type TemplateFile = (&'static str, &'static str);

/// `templates/rust/`: a cdylib crate with its own `[workspace]` and a small release profile.
const RUST: &[TemplateFile] = &[
    ("Cargo.toml", include_str!("../../../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../templates/rust/src/lib.rs")),
    ("rule.yaml", include_str!("../../../templates/rust/rule.yaml")),
    ("README.md", include_str!("../../../templates/rust/README.md")),
    (".gitignore", include_str!("../../../templates/rust/gitignore")),
];

/// `templates/assemblyscript/`: an npm project whose `asbuild` script writes
/// `build/rule.raw.wasm`.
const ASSEMBLYSCRIPT: &[TemplateFile] = &[
    ("package.json", include_str!("../../../templates/assemblyscript/package.json")),
    ("asconfig.json", include_str!("../../../templates/assemblyscript/asconfig.json")),
    ("assembly/index.ts", include_str!("../../../templates/assemblyscript/assembly/index.ts")),
    ("assembly/tsconfig.json", include_str!("../../../templates/assemblyscript/assembly/tsconfig.json")),
    ("rule.yaml", include_str!("../../../templates/assemblyscript/rule.yaml")),
    ("README.md", include_str!("../../../templates/assemblyscript/README.md")),
    (".gitignore", include_str!("../../../templates/assemblyscript/gitignore")),
];

/// The files of a new project in `lang`.
pub(crate) fn template(lang: Language) -> &'static [TemplateFile] {
    match lang {
        Language::Rust => RUST,
        Language::AssemblyScript => ASSEMBLYSCRIPT,
    }
}

/// Fills the placeholders of a template file.
pub(crate) fn render(text: &str, name: &str, sdk: &Path) -> String {
    let sdk = sdk.display().to_string().replace('\\', "/");
    text.replace("{{name}}", name).replace("{{crate_name}}", &name.replace('-', "_")).replace("{{sdk_path}}", &sdk)
}

/// Checks a rule name: lowercase letters, digits and `-`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?} is not a rule name; use lowercase letters, digits and '-', starting with a letter (like my-rule)"
        );
    }
    Ok(())
}

/// `sluice rule new`.
pub(crate) fn run(lang: &str, name: &str, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(lang) = Language::parse(lang) else {
        bail!("--lang {lang:?}: use rust or assemblyscript");
    };
    check_name(name)?;
    let parent = dir.unwrap_or_else(|| PathBuf::from("."));
    let target = parent.join(name);
    if target.exists() && std::fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose another name or --dir", target.display());
    }
    let sdk = match sdk {
        Some(path) => path,
        None => super::repo_root().join(match lang {
            Language::Rust => "sdk/rust",
            Language::AssemblyScript => "sdk/assemblyscript",
        }),
    };
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    if !sdk.is_dir() {
        eprintln!(
            "warning: the SDK is not at {}; the project will not build until its dependency points at it (pass --sdk PATH)",
            sdk.display()
        );
    }
    for (path, text) in template(lang) {
        let file = target.join(path);
        if let Some(folder) = file.parent() {
            std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        std::fs::write(&file, render(text, name, &sdk)).with_context(|| format!("writing {}", file.display()))?;
    }
    println!("Created {} ({} rule, SDK at {}).", target.display(), lang.name(), sdk.display());
    println!("Build it into a package with: sluice rule build {}", target.display());
    Ok(ExitCode::SUCCESS)
}
