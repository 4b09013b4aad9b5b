#!/usr/bin/env node
// Checks that a compiled rule module is one the Sluice host accepts (ABI v1):
//   * imports only `sluice1.{get,get_i64,set,set_i64,config,log,inputs}` and `env.{abort,trace,seed,Date.now}`;
//   * exports `memory`, the marker `sluice_abi_v1` and `sluice_init`;
//   * every hook export (`sluice_*`) is `() -> i32` (the marker `() -> ()`);
// Prints the size, imports and exports. Exit status 1 on a problem.
//
// usage: node check.mjs build/rule.raw.wasm

import { readFileSync } from "node:fs";

const ABI_IMPORTS = ["get", "get_i64", "set", "set_i64", "config", "log", "inputs"];
const ENV_IMPORTS = ["abort", "trace", "seed", "Date.now"];
const HOOKS = ["sluice_init", "sluice_authenticate", "sluice_route", "sluice_authorize", "sluice_uplink", "sluice_downlink"];

const file = process.argv[2];
if (!file) {
  console.error("usage: node check.mjs FILE.wasm");
  process.exit(2);
}
const bytes = readFileSync(file);

// ---- a minimal reader of the sections we need ----
let pos = 0;
function u8() {
  if (pos >= bytes.length) throw new Error("truncated module");
  return bytes[pos++];
}
function leb() {
  let result = 0, shift = 0, b;
  do {
    b = u8();
    result += (b & 0x7f) * 2 ** shift;
    shift += 7;
  } while (b & 0x80);
  return result;
}
function name() {
  const len = leb();
  const s = bytes.subarray(pos, pos + len).toString("utf8");
  pos += len;
  return s;
}
function valtype(t) {
  return { 0x7f: "i32", 0x7e: "i64", 0x7d: "f32", 0x7c: "f64", 0x7b: "v128", 0x70: "funcref", 0x6f: "externref" }[t] ?? `0x${t.toString(16)}`;
}
function limits() {
  const flag = u8();
  leb();
  if (flag & 1) leb();
}

if (bytes.readUInt32LE(0) !== 0x6d736100) throw new Error(`${file}: not a WebAssembly module`);
pos = 8;
const types = [];
const imports = [];
const funcTypes = []; // type index per function index (imports first)
const exports = [];
const custom = [];
let hasStart = false;
while (pos < bytes.length) {
  const id = u8();
  const size = leb();
  const end = pos + size;
  if (id === 0) custom.push(name());
  else if (id === 1) {
    for (let n = leb(); n > 0; n--) {
      if (u8() !== 0x60) throw new Error("unexpected type form");
      const params = Array.from({ length: leb() }, () => valtype(u8()));
      const results = Array.from({ length: leb() }, () => valtype(u8()));
      types.push({ params, results });
    }
  } else if (id === 2) {
    for (let n = leb(); n > 0; n--) {
      const module = name(), field = name(), kind = u8();
      if (kind === 0) {
        const t = leb();
        funcTypes.push(t);
        imports.push({ module, field, kind: "function", type: types[t] });
      } else if (kind === 1) {
        u8();
        limits();
        imports.push({ module, field, kind: "table" });
      } else if (kind === 2) {
        limits();
        imports.push({ module, field, kind: "memory" });
      } else if (kind === 3) {
        u8();
        u8();
        imports.push({ module, field, kind: "global" });
      } else {
        imports.push({ module, field, kind: `kind ${kind}` });
      }
    }
  } else if (id === 3) {
    for (let n = leb(); n > 0; n--) funcTypes.push(leb());
  } else if (id === 7) {
    for (let n = leb(); n > 0; n--) {
      const field = name(), kind = u8(), index = leb();
      exports.push({ name: field, kind: ["function", "table", "memory", "global", "tag"][kind] ?? `kind ${kind}`, index });
    }
  } else if (id === 8) {
    hasStart = true;
  }
  pos = end;
}

const sig = (t) => (t ? `(${t.params.join(", ")}) -> ${t.results.length ? t.results.join(", ") : "()"}` : "?");
const problems = [];
for (const imp of imports) {
  const ok = (imp.module === "sluice1" && ABI_IMPORTS.includes(imp.field)) || (imp.module === "env" && ENV_IMPORTS.includes(imp.field));
  if (!ok || imp.kind !== "function") {
    problems.push(`import ${imp.module}.${imp.field}: rules may only import sluice1.* and env.abort/trace/seed/Date.now`);
  }
}
const byName = new Map(exports.map((e) => [e.name, e]));
if (byName.get("memory")?.kind !== "memory") problems.push("no `memory` export");
for (const required of ["sluice_abi_v1", "sluice_init"]) {
  if (byName.get(required)?.kind !== "function") problems.push(`no \`${required}\` export function`);
}
for (const e of exports) {
  if (e.kind !== "function") continue;
  const t = types[funcTypes[e.index]];
  if (HOOKS.includes(e.name) && sig(t) !== "() -> i32") problems.push(`export ${e.name} is ${sig(t)}, expected () -> i32`);
  if (e.name === "sluice_abi_v1" && sig(t) !== "() -> ()") problems.push(`export sluice_abi_v1 is ${sig(t)}, expected () -> ()`);
}
// The incremental runtime initialises itself in a start function: allowed, and it runs under the
// host's limits at instantiation; top-level code of the rule's own should still move to sluice_init.

console.log(`${file}: ${bytes.length} bytes`);
console.log(`  imports: ${imports.map((i) => `${i.module}.${i.field}`).join(", ") || "(none)"}`);
console.log(`  exports: ${exports.map((e) => e.name).join(", ")}`);
const hooks = exports.filter((e) => HOOKS.includes(e.name) && e.name !== "sluice_init").map((e) => e.name.slice("sluice_".length));
console.log(`  hooks:   ${hooks.join(", ") || "(none)"}`);
if (hasStart) console.log("  start:   yes (runtime initialisation)");
if (custom.length) console.log(`  custom sections: ${custom.join(", ")}`);
for (const p of problems) console.error(`  error: ${p}`);
process.exit(problems.length ? 1 : 0);
