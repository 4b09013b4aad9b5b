//! The check of a module against ABI v1, before it is compiled: the marker export
//! `sluice_abi_v1`, an exported `memory`, `sluice_init`, hooks of type `() -> i32`, and only
//! the imports of the allowlist ([`ALLOWED_IMPORTS`]: `sluice1.*` and AssemblyScript's
//! `env.abort/trace/seed/Date.now`; no WASI). A module built for the wrong target or ABI is
//! refused with a message that names the fix rather than a link error.

use sluice_sdk::abi::{self, Hook, hook};
use wasmparser::{ExternalKind, FuncType, Import, TypeRef};

use super::ALLOWED_IMPORTS;
use crate::rules::module::{self, Module, ModuleError};

const FIX_ABI: &str = "rebuild it against sluice-sdk (Rust) or @sluice/sdk (AssemblyScript) for ABI v1";
const ALLOWLIST: &str = "rules may only import sluice1.* and env.abort, env.trace, env.seed, env.Date.now";

/// Why a module is not a Sluice rule of ABI v1; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    /// Not a WebAssembly module at all, or a malformed one.
    #[error("not a valid WebAssembly module: {0}")]
    NotWasm(wasmparser::BinaryReaderError),
    /// A component rather than a core module.
    #[error(
        "a component, not a core module: rules are core modules — build for wasm32-unknown-unknown with the Sluice SDK"
    )]
    Component,
    /// A memory import (AssemblyScript's `--importMemory`).
    #[error("imports {0} as a memory: a rule defines and exports its own memory (AssemblyScript: drop --importMemory)")]
    ImportsMemory(String),
    /// A table, global or tag import.
    #[error("imports {0}, which is not a function: {ALLOWLIST}", ALLOWLIST = ALLOWLIST)]
    ImportsNonFunction(String),
    /// A WASI import: built for the wrong target.
    #[error(
        "imports {0}: rules get no WASI — build for wasm32-unknown-unknown, not wasm32-wasip1 \
         (AssemblyScript: do not use the WASI shim)"
    )]
    ImportsWasi(String),
    /// An import of another major version's module (`sluice2.get`).
    #[error("imports {import}: built for ABI v{version}; this gateway speaks ABI v1 — {fix}", fix = FIX_ABI)]
    ImportsOtherAbi {
        /// `module.name`.
        import: String,
        /// The version in the module name.
        version: String,
    },
    /// A `sluice1` import that ABI v1 does not define.
    #[error(
        "imports {0}, which ABI v1 does not define (it has get, get_i64, set, set_i64, config, log) — {fix}",
        fix = FIX_ABI
    )]
    ImportsUnknown(String),
    /// An import outside the allowlist.
    #[error("imports {0}: {ALLOWLIST} (remove the import, or the library that needs it)", ALLOWLIST = ALLOWLIST)]
    ImportsNotAllowed(String),
    /// An allowed import with another signature.
    #[error("imports {import} as {found}, but ABI v1 defines {expected} — {fix}", fix = FIX_ABI)]
    ImportType {
        /// `module.name`.
        import: String,
        /// Its type in the module.
        found: String,
        /// Its type in ABI v1.
        expected: &'static str,
    },
    /// The marker export of another major version (`sluice_abi_v2`).
    #[error("built for ABI v{0}; this gateway speaks ABI v1 — {fix}", fix = FIX_ABI)]
    OtherAbi(String),
    /// No marker export at all.
    #[error(
        "no marker export {marker}: not a Sluice rule — build it with the Sluice SDK \
         (Rust: sluice_sdk::export_rule!; AssemblyScript: @sluice/sdk)",
        marker = abi::EXPORT_MARKER
    )]
    NoMarker,
    /// No exported memory.
    #[error("no memory export named \"memory\": a rule must export its linear memory")]
    NoMemory,
    /// No `sluice_init`.
    #[error("no export {init}: every rule has one — {fix}", init = hook::INIT, fix = FIX_ABI)]
    NoInit,
    /// A hook export that is not a `() -> i32` function.
    #[error("exports {export} as {found}; every hook is () -> i32 — {fix}", fix = FIX_ABI)]
    HookType {
        /// The export.
        export: &'static str,
        /// What it is.
        found: String,
    },
}

impl From<ModuleError> for AbiError {
    fn from(e: ModuleError) -> AbiError {
        match e {
            ModuleError::Binary(e) => AbiError::NotWasm(e),
            ModuleError::Component => AbiError::Component,
        }
    }
}

/// Checks a module against ABI v1 without compiling it; returns the hooks it exports (by name,
/// in chain order; not `init`).
pub(crate) fn check(wasm: &[u8]) -> Result<Vec<&'static str>, AbiError> {
    let module = module::parse(wasm)?;
    for import in &module.imports {
        check_import(import, &module)?;
    }
    if module.export(abi::EXPORT_MARKER).is_none() {
        let other = module.exports.iter().find_map(|e| e.name.strip_prefix("sluice_abi_v"));
        return Err(match other {
            Some(v) => AbiError::OtherAbi(v.to_string()),
            None => AbiError::NoMarker,
        });
    }
    if !module.export("memory").is_some_and(|e| e.kind == ExternalKind::Memory) {
        return Err(AbiError::NoMemory);
    }
    if module.export(hook::INIT).is_none() {
        return Err(AbiError::NoInit);
    }
    let mut hooks = Vec::new();
    for hook in Hook::ALL {
        let Some(export) = module.export(hook.export()) else { continue };
        let found = module.export_type(export).map_or_else(|| "not a function".to_string(), signature);
        if found != "() -> i32" {
            return Err(AbiError::HookType { export: hook.export(), found });
        }
        if hook != Hook::Init {
            hooks.push(hook.name());
        }
    }
    Ok(hooks)
}

/// Refuses an import outside the allowlist, naming the fix.
fn check_import(import: &Import<'_>, module: &Module<'_>) -> Result<(), AbiError> {
    let (m, name) = (import.module, import.name);
    let what = || format!("{m}.{name}");
    let func = match import.ty {
        TypeRef::Func(i) | TypeRef::FuncExact(i) => module.types.get(i as usize).cloned().flatten(),
        TypeRef::Memory(_) => return Err(AbiError::ImportsMemory(what())),
        _ => return Err(AbiError::ImportsNonFunction(what())),
    };
    if m.starts_with("wasi") {
        return Err(AbiError::ImportsWasi(what()));
    }
    if let Some(version) = m.strip_prefix("sluice").filter(|v| *v != "1" && v.parse::<u32>().is_ok()) {
        return Err(AbiError::ImportsOtherAbi { import: what(), version: version.to_string() });
    }
    let Some((_, _, expected)) = ALLOWED_IMPORTS.iter().find(|(am, an, _)| *am == m && *an == name) else {
        return Err(if m == abi::IMPORT_MODULE {
            AbiError::ImportsUnknown(what())
        } else {
            AbiError::ImportsNotAllowed(what())
        });
    };
    let found = func.as_ref().map_or_else(|| "?".to_string(), signature);
    if found != *expected {
        return Err(AbiError::ImportType { import: what(), found, expected });
    }
    Ok(())
}

/// Prints a function type as the allowlist writes it: `(i32, i32) -> i64`.
fn signature(ty: &FuncType) -> String {
    let list = |types: &[wasmparser::ValType]| types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    let results = match ty.results() {
        [] => "()".to_string(),
        [one] => one.to_string(),
        many => format!("({})", list(many)),
    };
    format!("({}) -> {results}", list(ty.params()))
}
