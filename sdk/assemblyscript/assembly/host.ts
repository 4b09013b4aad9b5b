// The guest side of ABI v1: how the SDK's types travel over the `sluice1` fields. Same encodings
// as the Rust SDK (sdk/rust/src/guest/{read,write}.rs); the host decodes them into the same
// values. Rule authors never call this file.

import * as abi from "./abi";
import { NONE } from "./code";
import { Config } from "./config";
import * as log from "./log";
import {
  Auth, Downlink, Identity, KeyValue, MessageType, Method, Principal, Publish, Request, Route, Transform, Uplink,
} from "./types";

/** Bytes read in a single `get`; longer fields take a second call into an exact allocation. */
const SCRATCH_CAP: i32 = 256;
const scratch: usize = memory.data(SCRATCH_CAP);
/** An upper bound on a repeated field's entries, against a host that never says "past the end". */
const MAX_ENTRIES: i32 = 65536;

// ---- The hook's input block ---------------------------------------------------------------------
// A hook fetches all its inputs in one `sluice1.inputs` call (`loadInputs`); while the block is
// loaded the readers below take fields from it, without crossing to the host again. Outside a
// hook (`sluice_init`) and for `CONFIG_ENTRY` / `NOW_MS` they call `get` per field.

/** The block's buffer: 4 KiB, grown to a longer block's length, shrunk back after one over 64 KiB. */
const BLOCK_CAP: i32 = 4096;
const BLOCK_KEEP: i32 = 65536;
const HEADER: i32 = <i32>abi.block.HEADER;
let blockBuf = new ArrayBuffer(BLOCK_CAP);
/** The end of the block's whole records; -1 while no block is loaded. */
let blockEnd: i32 = -1;
/** Fields below this number are indexed (every field a hook reads is). */
const INDEXED: i32 = 64;
/** The offset of each field's first record in the block, or -1. */
const firstRecord = new StaticArray<i32>(INDEXED);

/** Fetches the running hook's inputs in one crossing; the readers use them until `releaseInputs`. */
export function loadInputs(): void {
  let len = abi.inputs(changetype<usize>(blockBuf), blockBuf.byteLength);
  if (len > blockBuf.byteLength) {
    blockBuf = new ArrayBuffer(len);
    len = abi.inputs(changetype<usize>(blockBuf), len);
  }
  for (let i = 0; i < INDEXED; i++) firstRecord[i] = -1;
  blockEnd = -1;
  if (len < 0 || len > blockBuf.byteLength) return; // none: the readers ask field by field
  const base = changetype<usize>(blockBuf);
  let at = 0;
  while (at + HEADER <= len) {
    const field = load<i32>(base + <usize>at);
    const n = load<i32>(base + <usize>at + 8);
    if (n < 0 || n > len - at - HEADER) break; // a record cut short ends the block
    if (field >= 0 && field < INDEXED && firstRecord[field] < 0) firstRecord[field] = at;
    at += HEADER + n;
  }
  blockEnd = at;
}

/** Ends the hook's use of the block (and gives back a buffer a long block made large). */
export function releaseInputs(): void {
  blockEnd = -1;
  if (blockBuf.byteLength > BLOCK_KEEP) blockBuf = new ArrayBuffer(BLOCK_CAP);
}

/** Whether `field` comes from the loaded block. */
function inBlock(field: i32): bool {
  return blockEnd >= 0 && field != abi.field.CONFIG_ENTRY && field != abi.field.NOW_MS;
}

/** The offset of the record of `field[index]` in the block, or -1 (absent). */
function record(field: i32, index: i32): i32 {
  if (field < 0 || field >= INDEXED) return -1;
  let at = firstRecord[field];
  if (at < 0) return -1;
  const base = changetype<usize>(blockBuf);
  while (at + HEADER <= blockEnd && load<i32>(base + <usize>at) == field) {
    if (load<i32>(base + <usize>at + 4) == index) return at;
    at += HEADER + load<i32>(base + <usize>at + 8);
  }
  return -1;
}

/** Where a record's data starts in memory, and its length. */
function dataOf(at: i32): usize {
  return changetype<usize>(blockBuf) + <usize>at + <usize>HEADER;
}
function lengthOf(at: i32): i32 {
  return load<i32>(changetype<usize>(blockBuf) + <usize>at + 8);
}

// ---- Inputs ------------------------------------------------------------------------------------

/** One byte field, or null when absent or not readable in this hook. */
export function bytes(field: i32, index: i32): Uint8Array | null {
  if (inBlock(field)) {
    const at = record(field, index);
    if (at < 0) return null;
    const out = new Uint8Array(lengthOf(at));
    memory.copy(out.dataStart, dataOf(at), <usize>out.length);
    return out;
  }
  const len = abi.get(field, index, scratch, SCRATCH_CAP);
  if (len < 0) return null;
  const out = new Uint8Array(len);
  if (len <= SCRATCH_CAP) {
    memory.copy(out.dataStart, scratch, <usize>len);
  } else {
    const again = abi.get(field, index, out.dataStart, len);
    if (again < len) return out.subarray(0, max(again, 0));
  }
  return out;
}

/** One text field (UTF-8), or null when absent or not readable in this hook. */
export function text(field: i32, index: i32): string | null {
  if (inBlock(field)) {
    const at = record(field, index);
    return at < 0 ? null : String.UTF8.decodeUnsafe(dataOf(at), <usize>lengthOf(at));
  }
  const len = abi.get(field, index, scratch, SCRATCH_CAP);
  if (len < 0) return null;
  if (len <= SCRATCH_CAP) return String.UTF8.decodeUnsafe(scratch, <usize>len);
  const buf = new ArrayBuffer(len);
  const again = abi.get(field, index, changetype<usize>(buf), len);
  return String.UTF8.decodeUnsafe(changetype<usize>(buf), <usize>min(max(again, 0), len));
}

/** Every entry of a repeated text field, in order. */
export function list(field: i32): string[] {
  const out: string[] = [];
  if (inBlock(field)) {
    // The entries of a field are consecutive records, in index order.
    let at = field >= 0 && field < INDEXED ? firstRecord[field] : -1;
    const base = changetype<usize>(blockBuf);
    while (at >= 0 && at + HEADER <= blockEnd && load<i32>(base + <usize>at) == field) {
      out.push(String.UTF8.decodeUnsafe(dataOf(at), <usize>lengthOf(at)));
      at += HEADER + lengthOf(at);
    }
    return out;
  }
  for (let i = 0; i < MAX_ENTRIES; i++) {
    const entry = text(field, i);
    if (entry == null) break;
    out.push(entry);
  }
  return out;
}

/** Every entry of a repeated `key\0value` field (an entry without `\0` is a key with an empty value). */
export function pairs(field: i32): KeyValue[] {
  const entries = list(field);
  const out = new Array<KeyValue>(entries.length);
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    const nul = entry.indexOf("\0");
    out[i] = nul < 0 ? new KeyValue(entry, "") : new KeyValue(entry.substring(0, nul), entry.substring(nul + 1));
  }
  return out;
}

/** A numeric field, or `abi.ABSENT_I64`. */
export function int(field: i32): i64 {
  if (inBlock(field)) {
    const at = record(field, 0);
    return at < 0 || lengthOf(at) != 8 ? abi.ABSENT_I64 : load<i64>(dataOf(at));
  }
  return abi.get_i64(field, 0);
}

/** A numeric field that fits `0..=maxValue`, else `NONE`. */
function intIn(field: i32, maxValue: i64): i64 {
  const v = int(field);
  return v >= 0 && v <= maxValue ? v : NONE;
}

/** The request (authenticate, route). */
export function request(): Request {
  const req = new Request();
  const method = int(abi.field.METHOD);
  req.method = method >= 1 && method <= 7 ? <Method>(<i32>method) : Method.Get;
  req.type = int(abi.field.MESSAGE_TYPE) == 1 ? MessageType.NonConfirmable : MessageType.Confirmable;
  req.path = list(abi.field.PATH_SEGMENT);
  req.query = list(abi.field.QUERY);
  req.contentFormat = <i32>intIn(abi.field.CONTENT_FORMAT, 0xffff);
  req.accept = <i32>intIn(abi.field.ACCEPT, 0xffff);
  req.observe = intIn(abi.field.OBSERVE, 0xffffffff);
  req.maxAge = intIn(abi.field.MAX_AGE, 0xffffffff);
  const peer = text(abi.field.PEER, 0);
  req.peer = peer == null ? "" : peer;
  const id = new Identity();
  id.pskIdentity = text(abi.field.PSK_IDENTITY, 0);
  id.certSubject = text(abi.field.CERT_SUBJECT, 0);
  id.certSans = list(abi.field.CERT_SAN);
  id.certFingerprint = text(abi.field.CERT_FINGERPRINT, 0);
  req.identity = id;
  const payload = bytes(abi.field.PAYLOAD, 0);
  if (payload != null) req.payload = payload;
  return req;
}

/** The principal (route, authorize, uplink, downlink). */
export function principal(): Principal {
  const clientId = text(abi.field.CLIENT_ID, 0);
  return new Principal(clientId == null ? "" : clientId, text(abi.field.USERNAME, 0), pairs(abi.field.ATTRIBUTE));
}

/** The rule's config, from every `CONFIG_ENTRY`. */
export function config(): Config {
  return new Config(pairs(abi.field.CONFIG_ENTRY));
}

/** The message on its way up. */
export function uplink(): Uplink {
  const msg = new Uplink();
  const topic = text(abi.field.TOPIC, 0);
  if (topic != null) msg.topic = topic;
  const payload = bytes(abi.field.PAYLOAD, 0);
  if (payload != null) msg.payload = payload;
  msg.contentFormat = <i32>intIn(abi.field.CONTENT_FORMAT, 0xffff);
  return msg;
}

/** The message on its way down. */
export function downlink(): Downlink {
  const msg = new Downlink();
  const topic = text(abi.field.TOPIC, 0);
  if (topic != null) msg.topic = topic;
  const payload = bytes(abi.field.PAYLOAD, 0);
  if (payload != null) msg.payload = payload;
  msg.contentType = text(abi.field.CONTENT_TYPE, 0);
  msg.userProperties = pairs(abi.field.USER_PROPERTY);
  return msg;
}

// ---- Outputs -----------------------------------------------------------------------------------
// A `set` the host refuses (a QoS above 2, a topic over the size limit, …) makes the hook return
// that negative status instead of the verdict, so the host applies the fail policy rather than
// acting on half a verdict; the refusal is logged.

/** The first refusal of the current verdict (0 while every `set` succeeded). */
let refused: i32 = 0;

function check(field: i32, status: i32): void {
  if (status >= 0 || refused < 0) return;
  refused = status;
  log.error("the host refused output field " + field.toString() + ": status " + status.toString());
}

function putRaw(field: i32, ptr: usize, len: i32): void {
  if (refused < 0) return;
  check(field, abi.set(field, ptr, len));
}

/** Sets a byte output. */
export function putBytes(field: i32, value: Uint8Array): void {
  putRaw(field, value.dataStart, value.length);
}

/** Sets a text output (UTF-8). */
export function putText(field: i32, value: string): void {
  if (refused < 0) return;
  const utf8 = String.UTF8.encode(value);
  putRaw(field, changetype<usize>(utf8), utf8.byteLength);
}

/** Sets a numeric output. */
export function putInt(field: i32, value: i64): void {
  if (refused < 0) return;
  check(field, abi.set_i64(field, value));
}

function putPair(field: i32, key: string, value: string): void {
  putText(field, key + "\0" + value);
}

/** Returns `kind` once the outputs are written, or the refused status. */
function verdict(kind: i32): i32 {
  const status = refused;
  refused = 0;
  return status < 0 ? status : kind;
}

function reject(code: u8, reason: string): void {
  putInt(abi.field.OUT_CODE, <i64>code);
  putText(abi.field.OUT_REASON, reason);
}

function payloadAndFormat(payload: Uint8Array | null, contentFormat: i32): void {
  putBytes(abi.field.OUT_PAYLOAD, payload == null ? new Uint8Array(0) : payload);
  if (contentFormat >= 0) putInt(abi.field.OUT_CONTENT_FORMAT, <i64>contentFormat);
}

/** Writes an `Auth` verdict and returns its number. */
export function writeAuth(auth: Auth): i32 {
  refused = 0;
  switch (auth.kind) {
    case abi.hook.AUTH_ALLOW: {
      const who = auth.principal!;
      putText(abi.field.OUT_CLIENT_ID, who.clientId);
      const username = who.username;
      if (username != null) putText(abi.field.OUT_USERNAME, username);
      for (let i = 0; i < who.attributes.length; i++) {
        putPair(abi.field.OUT_ATTRIBUTE, who.attributes[i].key, who.attributes[i].value);
      }
      break;
    }
    case abi.hook.AUTH_SESSION:
      putText(abi.field.OUT_CLIENT_ID, auth.clientId);
      putText(abi.field.OUT_TOKEN, auth.token);
      break;
    case abi.hook.AUTH_DENY:
      reject(auth.code, auth.reason);
      break;
  }
  return verdict(auth.kind);
}

function publish(p: Publish): void {
  putText(abi.field.OUT_TOPIC, p.topic);
  if (p.qos >= 0) putInt(abi.field.OUT_QOS, <i64>p.qos);
  putInt(abi.field.OUT_RETAIN, p.retain ? 1 : 0);
  if (p.expiry >= 0) putInt(abi.field.OUT_EXPIRY, p.expiry);
  for (let i = 0; i < p.userProperties.length; i++) {
    putPair(abi.field.OUT_USER_PROPERTY, p.userProperties[i].key, p.userProperties[i].value);
  }
}

/** Writes a `Route` verdict and returns its number. */
export function writeRoute(route: Route): i32 {
  refused = 0;
  switch (route.kind) {
    case abi.hook.ROUTE_PUBLISH:
    case abi.hook.ROUTE_SET_VALUE:
      publish(route.message!);
      break;
    case abi.hook.ROUTE_SUBSCRIBE:
    case abi.hook.ROUTE_OBSERVE_VALUE:
      putText(abi.field.OUT_TOPIC, route.topic);
      if (route.qos >= 0) putInt(abi.field.OUT_QOS, <i64>route.qos);
      break;
    case abi.hook.ROUTE_UNSUBSCRIBE:
    case abi.hook.ROUTE_READ:
    case abi.hook.ROUTE_DELETE:
      putText(abi.field.OUT_TOPIC, route.topic);
      break;
    case abi.hook.ROUTE_RESPOND:
      putInt(abi.field.OUT_CODE, <i64>route.code);
      payloadAndFormat(route.payload, route.contentFormat);
      break;
    case abi.hook.ROUTE_REJECT:
      reject(route.code, route.reason);
      break;
  }
  return verdict(route.kind);
}

/** Writes a `Transform` verdict (uplink, downlink) and returns its number. */
export function writeTransform(t: Transform): i32 {
  refused = 0;
  switch (t.kind) {
    case abi.hook.TRANSFORM_REPLACE:
      payloadAndFormat(t.payload, t.contentFormat);
      break;
    case abi.hook.TRANSFORM_REJECT:
      reject(t.code, t.reason);
      break;
  }
  return verdict(t.kind);
}

/** Milliseconds since the Unix epoch, frozen for the call (the host's `NOW_MS`). */
export function nowMs(): i64 {
  const now = abi.get_i64(abi.field.NOW_MS, 0);
  return now == abi.ABSENT_I64 ? 0 : now;
}

/** One config value by dotted key, straight from the host (`sluice1.config`), or null. */
export function configValue(key: string): string | null {
  const k = String.UTF8.encode(key);
  const len = abi.config(changetype<usize>(k), k.byteLength, scratch, SCRATCH_CAP);
  if (len < 0) return null;
  if (len <= SCRATCH_CAP) return String.UTF8.decodeUnsafe(scratch, <usize>len);
  const buf = new ArrayBuffer(len);
  const again = abi.config(changetype<usize>(k), k.byteLength, changetype<usize>(buf), len);
  return String.UTF8.decodeUnsafe(changetype<usize>(buf), <usize>min(max(again, 0), len));
}
