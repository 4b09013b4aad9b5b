// A host for running a rule module under node, for tests: implements the `sluice1` imports (ABI
// v1) over plain JS values, the way the gateway does, and records the outputs.
//
//   import { MockHost, F } from "@sluice/sdk/scripts/mock-host.mjs";
//   const host = await MockHost.load("build/rule.raw.wasm", { prefix: "devices" });
//   const r = host.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "a", "b"], [F.CLIENT_ID]: "dev1" });
//   // r.verdict, r.outputs: [[field, value], …] (value: Buffer for bytes, BigInt for numbers)

import { readFileSync } from "node:fs";

/** Field numbers of ABI v1 (sdk/abi/src/lib.rs). */
export const F = {
  METHOD: 1, MESSAGE_TYPE: 2, PATH_SEGMENT: 3, QUERY: 4, CONTENT_FORMAT: 5, ACCEPT: 6, OBSERVE: 7, MAX_AGE: 8,
  PEER: 9, PAYLOAD: 10, PSK_IDENTITY: 20, CERT_SUBJECT: 21, CERT_SAN: 22, CERT_FINGERPRINT: 23, CLIENT_ID: 30,
  USERNAME: 31, ATTRIBUTE: 32, ACCESS: 40, TOPIC: 41, CONTENT_TYPE: 42, USER_PROPERTY: 43, CONFIG_ENTRY: 50,
  NOW_MS: 51, OUT_CLIENT_ID: 100, OUT_USERNAME: 101, OUT_ATTRIBUTE: 102, OUT_TOKEN: 103, OUT_TOPIC: 104,
  OUT_QOS: 105, OUT_RETAIN: 106, OUT_EXPIRY: 107, OUT_USER_PROPERTY: 108, OUT_CODE: 109, OUT_REASON: 110,
  OUT_PAYLOAD: 111, OUT_CONTENT_FORMAT: 112,
};
const ABSENT_I64 = -(2n ** 63n);
const INT_FIELDS = new Set([1, 2, 5, 6, 7, 8, 40, 51]);
/** The most the mock accepts for one output (the real host's limit is its own). */
const MAX_OUTPUT = 65535;

/** Flattens a config object to dotted `key\0value` entries, like the gateway does. */
export function flatten(config, prefix = "", out = []) {
  if (config === null || typeof config !== "object") {
    out.push(`${prefix}\0${config}`);
    return out;
  }
  for (const [k, v] of Object.entries(config)) flatten(v, prefix ? `${prefix}.${k}` : String(k), out);
  return out;
}

export class MockHost {
  constructor(module, config = {}) {
    this.inputs = {};
    this.outputs = [];
    this.logs = [];
    /** Calls of each import since the last `call` began. */
    this.calls = {};
    this.config = flatten(config);
    const host = this;
    const mem = () => new Uint8Array(host.instance.exports.memory.buffer);
    const bytesOf = (v) => (typeof v === "string" ? Buffer.from(v, "utf8") : Buffer.from(v));
    const copyOut = (value, dst, cap) => {
      const b = bytesOf(value);
      const m = mem();
      if (dst + Math.min(cap, b.length) > m.length) throw new Error(`bad pointer ${dst}+${cap}`);
      m.set(b.subarray(0, Math.min(cap, b.length)), dst);
      return b.length;
    };
    /** The block `inputs` writes: every input but the config and the clock, by field and index. */
    const block = () => {
      const parts = [];
      for (const field of Object.keys(host.inputs).map(Number).sort((a, b) => a - b)) {
        if (field === F.CONFIG_ENTRY || field === F.NOW_MS) continue;
        const v = host.inputs[field];
        if (v === undefined || v === null) continue; // absent, as `get` has it
        const values = Array.isArray(v) ? v : [v];
        values.forEach((value, index) => {
          let data;
          if (INT_FIELDS.has(field)) {
            data = Buffer.alloc(8);
            data.writeBigInt64LE(BigInt(value));
          } else data = bytesOf(value);
          const head = Buffer.alloc(12);
          head.writeInt32LE(field, 0);
          head.writeInt32LE(index, 4);
          head.writeInt32LE(data.length, 8);
          parts.push(head, data);
        });
      }
      return Buffer.concat(parts);
    };
    const counted = (fns) =>
      Object.fromEntries(Object.entries(fns).map(([name, f]) => [name, (...args) => {
        host.calls[name] = (host.calls[name] ?? 0) + 1;
        return f(...args);
      }]));
    const imports = {
      sluice1: counted({
        inputs(dst, cap) {
          dst >>>= 0;
          if (dst + cap > mem().length) throw new Error(`bad pointer: inputs dst ${dst.toString(16)}+${cap}`);
          const b = block();
          if (b.length <= cap) mem().set(b, dst);
          return b.length;
        },
        get(field, index, dst, cap) {
          dst >>>= 0;
          if (dst + cap > mem().length) throw new Error(`bad pointer: get dst ${dst.toString(16)}+${cap}`);
          let v = field === F.CONFIG_ENTRY ? host.config : host.inputs[field];
          if (v === undefined || INT_FIELDS.has(field)) return -1;
          if (Array.isArray(v)) {
            if (index >= v.length) return -1;
            v = v[index];
          } else if (index !== 0) return -1;
          return copyOut(v, dst, cap);
        },
        get_i64(field, index) {
          const v = field === F.NOW_MS && host.inputs[field] === undefined ? 1700000000000 : host.inputs[field];
          return v === undefined || !INT_FIELDS.has(field) || index !== 0 ? ABSENT_I64 : BigInt(v);
        },
        set(field, src, len) {
          src >>>= 0;
          if (src + len > mem().length) throw new Error(`bad pointer: set ${src}+${len}`);
          if (field < 100 || field > 112) return -5;
          if (len > MAX_OUTPUT) return -3;
          host.outputs.push([field, Buffer.from(mem().slice(src, src + len))]);
          return 0;
        },
        set_i64(field, value) {
          if (field < 100 || field > 112) return -5;
          if (field === F.OUT_QOS && (value < 0n || value > 2n)) return -4;
          host.outputs.push([field, value]);
          return 0;
        },
        config(key, keyLen, dst, cap) {
          const k = Buffer.from(mem().slice(key, key + keyLen)).toString("utf8");
          const entry = host.config.find((e) => e.split("\0")[0] === k);
          return entry === undefined ? -1 : copyOut(entry.slice(entry.indexOf("\0") + 1), dst, cap);
        },
        log(level, msg, len) {
          host.logs.push([level, Buffer.from(mem().slice(msg, msg + len)).toString("utf8")]);
        },
      }),
      env: {
        abort() {
          throw new Error("env.abort");
        },
        trace() {},
        seed: () => 42,
        "Date.now": () => 1700000000000,
      },
    };
    this.instance = new WebAssembly.Instance(module, imports);
  }

  /** Compiles `file`, instantiates it and runs `sluice_init` with `config` (throws on refusal). */
  static load(file, config = {}) {
    const host = new MockHost(new WebAssembly.Module(readFileSync(file)), config);
    const r = host.call("sluice_init", {});
    if (r.verdict !== 0) throw new Error(`init refused (${r.verdict}): ${r.text(F.OUT_REASON)}`);
    return host;
  }

  /** Runs one export with `inputs` ({field: value | [values]}); returns the verdict and outputs. */
  call(name, inputs) {
    this.inputs = inputs;
    this.outputs = [];
    this.calls = {};
    const verdict = this.instance.exports[name]();
    const outputs = this.outputs;
    return {
      verdict,
      outputs,
      get(field) {
        return outputs.filter(([f]) => f === field).map(([, v]) => v);
      },
      text(field) {
        const v = outputs.find(([f]) => f === field);
        return v === undefined ? undefined : v[1].toString("utf8");
      },
      int(field) {
        const v = outputs.find(([f]) => f === field);
        return v === undefined ? undefined : Number(v[1]);
      },
    };
  }
}
