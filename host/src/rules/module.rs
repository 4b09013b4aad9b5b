//! The binary layout of a WebAssembly module, as far as packages need it: the sections, the
//! names of custom sections, imports and exports, and appending or dropping custom sections.
//! (The runtime validates modules fully with `wasmparser`; this is only for packaging and
//! `sluice rule inspect`, and never trusts a length it has not checked.)

use super::package::HOOKS;

/// The module without its DWARF sections (`.debug_*`): what `sluice rule build` ships, since a
/// release build of a workspace member may carry megabytes of debug info. The `name` section
/// (function names in trap messages) stays.
pub fn strip_debug(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let found = sections(wasm)?;
    let mut out = Vec::with_capacity(wasm.len());
    out.extend_from_slice(&wasm[..8]);
    for s in found.iter().filter(|s| !s.name.as_deref().is_some_and(|n| n.starts_with(".debug_"))) {
        out.extend_from_slice(&wasm[s.whole.clone()]);
    }
    Ok(out)
}

/// Appends a custom section: id 0, LEB128 size, LEB128 name length, name, payload.
pub(crate) fn append_custom(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut body = Vec::with_capacity(name.len() + payload.len() + 5);
    leb128(&mut body, name.len() as u64);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    out.push(0);
    leb128(out, body.len() as u64);
    out.extend_from_slice(&body);
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
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

/// One section of a module.
#[derive(Debug, Clone)]
pub struct Section {
    /// The section id (0 custom, 2 import, 7 export, …).
    pub id: u8,
    /// A custom section's name.
    pub name: Option<String>,
    /// The whole section, header included.
    pub whole: std::ops::Range<usize>,
    /// The payload (after the name, for custom sections).
    pub payload: std::ops::Range<usize>,
}

/// A cursor over module bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or("unexpected end of the module")?;
        self.pos += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut result: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            result |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(result).map_err(|_| "LEB128 number out of range".into());
            }
        }
        Err("LEB128 number too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or("a length runs past the end")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn name(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }

    fn limits(&mut self) -> Result<(), String> {
        let flags = self.byte()?;
        self.u32()?;
        if flags & 1 != 0 {
            self.u32()?;
        }
        Ok(())
    }
}

/// Splits a module into its sections (the header is checked; section contents are not).
pub fn sections(wasm: &[u8]) -> Result<Vec<Section>, String> {
    if wasm.len() < 8 || wasm[..4] != *b"\0asm" {
        return Err("no \\0asm header".into());
    }
    if wasm[4..8] != [1, 0, 0, 0] {
        return Err("not a core module of version 1 (a component? build a core module)".into());
    }
    let mut r = Reader { bytes: wasm, pos: 8 };
    let mut out = Vec::new();
    while r.pos < wasm.len() {
        let start = r.pos;
        let id = r.byte()?;
        let size = r.u32()? as usize;
        let body_start = r.pos;
        r.take(size)?;
        let end = r.pos;
        let (name, payload) = if id == 0 {
            let mut inner = Reader { bytes: &wasm[..end], pos: body_start };
            let name = inner.name()?;
            (Some(name), inner.pos..end)
        } else {
            (None, body_start..end)
        };
        out.push(Section { id, name, whole: start..end, payload });
    }
    Ok(out)
}

/// An import: module, name and kind (`func`, `table`, `memory`, `global`, `tag`).
pub type Import = (String, String, &'static str);

/// The module's imports, in order.
pub fn imports(wasm: &[u8]) -> Result<Vec<Import>, String> {
    let mut out = Vec::new();
    for s in sections(wasm)?.iter().filter(|s| s.id == 2) {
        let mut r = Reader { bytes: &wasm[..s.payload.end], pos: s.payload.start };
        for _ in 0..r.u32()? {
            let module = r.name()?;
            let name = r.name()?;
            let kind = match r.byte()? {
                0 => {
                    r.u32()?;
                    "func"
                }
                1 => {
                    r.byte()?;
                    r.limits()?;
                    "table"
                }
                2 => {
                    r.limits()?;
                    "memory"
                }
                3 => {
                    r.byte()?;
                    r.byte()?;
                    "global"
                }
                _ => {
                    out.push((module, name, "other"));
                    return Ok(out);
                }
            };
            out.push((module, name, kind));
        }
    }
    Ok(out)
}

/// The module's exports: name and kind.
pub fn exports(wasm: &[u8]) -> Result<Vec<(String, &'static str)>, String> {
    let mut out = Vec::new();
    for s in sections(wasm)?.iter().filter(|s| s.id == 7) {
        let mut r = Reader { bytes: &wasm[..s.payload.end], pos: s.payload.start };
        for _ in 0..r.u32()? {
            let name = r.name()?;
            let kind = match r.byte()? {
                0 => "func",
                1 => "table",
                2 => "memory",
                3 => "global",
                _ => "other",
            };
            r.u32()?;
            out.push((name, kind));
        }
    }
    Ok(out)
}

/// The hook names (`route`, …) whose `sluice_*` exports the module has, in chain order.
pub fn exported_hooks(wasm: &[u8]) -> Vec<String> {
    let exports = exports(wasm).unwrap_or_default();
    HOOKS
        .iter()
        .filter(|h| exports.iter().any(|(name, kind)| *kind == "func" && name.strip_prefix("sluice_") == Some(h)))
        .map(|h| (*h).to_string())
        .collect()
}
