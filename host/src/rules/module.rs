//! The binary layout of a WebAssembly module, read with `wasmparser` (the parser wasmtime
//! itself uses): its sections, the names of custom sections, its types, imports and exports.
//! The runtime's ABI check (`engine`), packaging (`package`) and `sluice rule inspect` all read
//! modules through [`parse`]; the only thing written by hand is a custom section
//! ([`append_custom`]), for `sluice rule pack`.

use std::ops::Range;

use sluice_sdk::abi::Hook;
use wasmparser::{CompositeInnerType, Encoding, Export, ExternalKind, FuncType, Parser, Payload, TypeRef};

/// Why bytes are not a module this host can read.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Not a WebAssembly binary, or a malformed one (`wasmparser`'s words, with the offset).
    #[error("{0}")]
    Binary(#[from] wasmparser::BinaryReaderError),
    /// A WebAssembly component: rules are core modules.
    #[error("not a core module of version 1 (a component? build a core module)")]
    Component,
}

/// One section of a module.
#[derive(Debug, Clone)]
pub struct Section {
    /// The section id (0 custom, 2 import, 7 export, …).
    pub id: u8,
    /// A custom section's name.
    pub name: Option<String>,
    /// The whole section, header included.
    pub whole: Range<usize>,
    /// The payload (after the name, for custom sections).
    pub payload: Range<usize>,
}

/// A module, read: every section, the function types, and the imports and exports.
pub(crate) struct Module<'a> {
    /// The sections in file order.
    pub sections: Vec<Section>,
    /// Each type of the type section: its function type (`None` for other composite types).
    pub types: Vec<Option<FuncType>>,
    /// The imports, in order.
    pub imports: Vec<wasmparser::Import<'a>>,
    /// The type index of every function, imported ones first.
    pub funcs: Vec<u32>,
    /// The exports, in order.
    pub exports: Vec<Export<'a>>,
}

/// Reads a core module: the header, every section, and the type, import, function and export
/// sections' contents. (Function bodies and other sections are not decoded: the runtime
/// validates them when it compiles.)
pub(crate) fn parse(wasm: &[u8]) -> Result<Module<'_>, ModuleError> {
    let mut module =
        Module { sections: Vec::new(), types: Vec::new(), imports: Vec::new(), funcs: Vec::new(), exports: Vec::new() };
    // Sections follow each other from the end of the 8-byte header: a section's header starts
    // where the previous one ended.
    let mut end = 8;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Some((id, body)) = payload.as_section() {
            let (name, data) = match &payload {
                Payload::CustomSection(c) => (Some(c.name().to_string()), c.data_offset()..body.end),
                _ => (None, body.clone()),
            };
            module.sections.push(Section { id, name, whole: end..body.end, payload: data });
            end = body.end;
        }
        match payload {
            Payload::Version { encoding: Encoding::Component, .. } => return Err(ModuleError::Component),
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group?.into_types() {
                        module.types.push(match sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(f),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if let TypeRef::Func(t) | TypeRef::FuncExact(t) = import.ty {
                        module.funcs.push(t);
                    }
                    module.imports.push(import);
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    module.funcs.push(ty?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    module.exports.push(export?);
                }
            }
            _ => {}
        }
    }
    Ok(module)
}

impl Module<'_> {
    /// The export named `name`.
    pub(crate) fn export(&self, name: &str) -> Option<&Export<'_>> {
        self.exports.iter().find(|e| e.name == name)
    }

    /// The type of an exported function (none for other exports, or an index out of range).
    pub(crate) fn export_type(&self, export: &Export<'_>) -> Option<&FuncType> {
        if !matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
            return None;
        }
        let ty = *self.funcs.get(export.index as usize)?;
        self.types.get(ty as usize)?.as_ref()
    }
}

/// Splits a module into its sections (the header and section framing are checked).
pub fn sections(wasm: &[u8]) -> Result<Vec<Section>, ModuleError> {
    Ok(parse(wasm)?.sections)
}

/// The module without its DWARF sections (`.debug_*`): what `sluice rule build` ships, since a
/// release build of a workspace member may carry megabytes of debug info. The `name` section
/// (function names in trap messages) stays.
pub fn strip_debug(wasm: &[u8]) -> Result<Vec<u8>, ModuleError> {
    let kept = sections(wasm)?.into_iter().filter(|s| !s.name.as_deref().is_some_and(|n| n.starts_with(".debug_")));
    Ok(rebuild(wasm, kept))
}

/// The module's header followed by `sections` (sections of `wasm`), in that order.
pub(crate) fn rebuild(wasm: &[u8], sections: impl IntoIterator<Item = Section>) -> Vec<u8> {
    let mut out = Vec::with_capacity(wasm.len());
    out.extend_from_slice(wasm.get(..8).unwrap_or_default());
    for s in sections {
        out.extend_from_slice(wasm.get(s.whole).unwrap_or_default());
    }
    out
}

/// Appends a custom section: id 0, LEB128 size, LEB128 name length, name, payload.
pub(crate) fn append_custom(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut body = Vec::with_capacity(name.len() + payload.len() + 5);
    write_uleb128(&mut body, name.len() as u64);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    out.push(0);
    write_uleb128(out, body.len() as u64);
    out.extend_from_slice(&body);
}

/// Appends `n` as unsigned LEB128 (the integer encoding of the Wasm binary format).
pub(crate) fn write_uleb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// An import: module, name and kind (`func`, `table`, `memory`, `global`, `tag`).
pub type Import = (String, String, &'static str);

/// The module's imports, in order.
pub fn imports(wasm: &[u8]) -> Result<Vec<Import>, ModuleError> {
    let kind = |ty: &TypeRef| match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => "func",
        TypeRef::Table(_) => "table",
        TypeRef::Memory(_) => "memory",
        TypeRef::Global(_) => "global",
        TypeRef::Tag(_) => "tag",
    };
    Ok(parse(wasm)?.imports.iter().map(|i| (i.module.to_string(), i.name.to_string(), kind(&i.ty))).collect())
}

/// The module's exports: name and kind.
pub fn exports(wasm: &[u8]) -> Result<Vec<(String, &'static str)>, ModuleError> {
    let kind = |kind: ExternalKind| match kind {
        ExternalKind::Func | ExternalKind::FuncExact => "func",
        ExternalKind::Table => "table",
        ExternalKind::Memory => "memory",
        ExternalKind::Global => "global",
        ExternalKind::Tag => "tag",
    };
    Ok(parse(wasm)?.exports.iter().map(|e| (e.name.to_string(), kind(e.kind))).collect())
}

/// The names of the hooks (`route`, …) whose exports the module has as functions, in chain
/// order; none for bytes that are not a module.
pub fn exported_hooks(wasm: &[u8]) -> Vec<String> {
    let Ok(module) = parse(wasm) else { return Vec::new() };
    let exported = |hook: &Hook| {
        module.export(hook.export()).is_some_and(|e| matches!(e.kind, ExternalKind::Func | ExternalKind::FuncExact))
    };
    Hook::chain().iter().filter(|h| exported(h)).map(|h| h.name().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_imports_and_exports_are_read() {
        let wasm = wat::parse_str(
            r#"(module (import "sluice1" "log" (func (param i32 i32 i32))) (memory (export "memory") 1)
                (func (export "sluice_route") (result i32) (i32.const 0)) (@custom "x" "abc"))"#,
        )
        .unwrap();
        let found = sections(&wasm).unwrap();
        let custom = found.iter().find(|s| s.name.as_deref() == Some("x")).unwrap();
        assert_eq!(&wasm[custom.payload.clone()], b"abc");
        assert_eq!(found.last().unwrap().whole.end, wasm.len());
        assert_eq!(rebuild(&wasm, found), wasm);
        assert_eq!(imports(&wasm).unwrap(), [("sluice1".to_string(), "log".to_string(), "func")]);
        assert_eq!(exports(&wasm).unwrap(), [("memory".to_string(), "memory"), ("sluice_route".to_string(), "func")]);
        assert_eq!(exported_hooks(&wasm), ["route"]);
    }

    #[test]
    fn appended_sections_read_back_and_bad_bytes_are_refused() {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        append_custom(&mut wasm, "sluice.manifest", &[7; 300]);
        let found = sections(&wasm).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name.as_deref(), Some("sluice.manifest"));
        assert_eq!(wasm[found[0].payload.clone()], [7; 300]);
        assert!(matches!(sections(b"hello"), Err(ModuleError::Binary(_))));
        assert!(matches!(sections(b"\0asm\x0d\0\x01\0"), Err(ModuleError::Component)));
        wasm.pop();
        assert!(sections(&wasm).is_err());
    }

    #[test]
    fn leb128_is_written_in_seven_bit_groups() {
        let mut out = Vec::new();
        write_uleb128(&mut out, 624_485);
        assert_eq!(out, [0xe5, 0x8e, 0x26]);
    }
}
