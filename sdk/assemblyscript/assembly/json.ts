// A small JSON toolkit for payload transforms: parse (RFC 8259, UTF-8 bytes), inspect and edit
// objects and arrays, serialise compactly, and compact a document without re-encoding it.
//
// Numbers keep the text they were written with (so `1.50` stays `1.50`, and integers beyond
// 2^53 survive); strings are decoded (escapes included) to AssemblyScript strings and written
// back with the minimal escapes. Nesting deeper than `MAX_DEPTH` is refused rather than risking
// the stack.

/** The deepest nesting `parse` accepts. */
export const MAX_DEPTH: i32 = 128;

/** The type of a JSON value. */
export enum JsonKind {
  Null = 0,
  Bool = 1,
  Number = 2,
  String = 3,
  Array = 4,
  Object = 5,
}

/**
 * A JSON value. Build with `JsonValue.parse*` or the `of*`/`new*` constructors; objects keep their
 * keys in order (`set` replaces an existing key in place, or appends).
 */
export class JsonValue {
  /** The value's type. */
  kind: JsonKind = JsonKind.Null;
  /** Bool: the value. */
  bool: bool = false;
  /** Number: the number as written (valid JSON number syntax). */
  number: string = "";
  /** String: the decoded string. */
  string: string = "";
  /** Array: the items. */
  items: JsonValue[] = [];
  /** Object: the keys, in order (parallel to `values`). */
  keys: string[] = [];
  /** Object: the values, in order (parallel to `keys`). */
  values: JsonValue[] = [];

  /** `null`. */
  static ofNull(): JsonValue {
    return new JsonValue();
  }
  /** `true` or `false`. */
  static ofBool(value: bool): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Bool;
    v.bool = value;
    return v;
  }
  /** An integer number. */
  static ofInteger(value: i64): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Number;
    v.number = value.toString();
    return v;
  }
  /** A number; NaN and infinities (not JSON) become `null`. */
  static ofNumber(value: f64): JsonValue {
    if (!isFinite(value)) return JsonValue.ofNull();
    if (value == Math.trunc(value) && Math.abs(value) < 9007199254740992.0) return JsonValue.ofInteger(<i64>value);
    const v = new JsonValue();
    v.kind = JsonKind.Number;
    v.number = value.toString();
    return v;
  }
  /** A string. */
  static ofString(value: string): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.String;
    v.string = value;
    return v;
  }
  /** An empty array. */
  static newArray(): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Array;
    return v;
  }
  /** An empty object. */
  static newObject(): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Object;
    return v;
  }

  /** Parses a whole document from UTF-8 bytes; null when it is not valid JSON. */
  static parseBytes(bytes: Uint8Array): JsonValue | null {
    const p = new Parser(bytes.dataStart, bytes.length);
    return p.document();
  }
  /** Parses a whole document from a string; null when it is not valid JSON. */
  static parse(text: string): JsonValue | null {
    return JsonValue.parseBytes(Uint8Array.wrap(String.UTF8.encode(text)));
  }

  /** True for an object. */
  isObject(): bool {
    return this.kind == JsonKind.Object;
  }
  /** True for an array. */
  isArray(): bool {
    return this.kind == JsonKind.Array;
  }
  /** True for `null`. */
  isNull(): bool {
    return this.kind == JsonKind.Null;
  }

  /** Object: the value of `key`, or null (also for a non-object). */
  get(key: string): JsonValue | null {
    if (this.kind != JsonKind.Object) return null;
    for (let i = this.keys.length - 1; i >= 0; i--) {
      if (this.keys[i] == key) return this.values[i];
    }
    return null;
  }
  /** Object: true when `key` is present. */
  has(key: string): bool {
    return this.get(key) != null;
  }
  /** Object: sets `key` (replacing its value in place, or appending). Returns this. */
  set(key: string, value: JsonValue): JsonValue {
    assert(this.kind == JsonKind.Object, "JsonValue.set on a non-object");
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) {
        this.values[i] = value;
        return this;
      }
    }
    this.keys.push(key);
    this.values.push(value);
    return this;
  }
  /** Object: removes every occurrence of `key`; true when one was there. */
  remove(key: string): bool {
    let found = false;
    for (let i = this.keys.length - 1; i >= 0; i--) {
      if (this.keys[i] == key) {
        this.keys.splice(i, 1);
        this.values.splice(i, 1);
        found = true;
      }
    }
    return found;
  }
  /** Array: appends an item. Returns this. */
  push(value: JsonValue): JsonValue {
    assert(this.kind == JsonKind.Array, "JsonValue.push on a non-array");
    this.items.push(value);
    return this;
  }
  /** Array: the number of items; object: the number of keys; otherwise 0. */
  get length(): i32 {
    if (this.kind == JsonKind.Array) return this.items.length;
    if (this.kind == JsonKind.Object) return this.keys.length;
    return 0;
  }

  /** Number: its value as f64 (NaN for another type). */
  asF64(): f64 {
    return this.kind == JsonKind.Number ? parseFloat(this.number) : NaN;
  }
  /** String: the string, or null for another type. */
  asString(): string | null {
    return this.kind == JsonKind.String ? this.string : null;
  }

  /** The compact serialisation (no whitespace), as UTF-8 bytes. */
  toBytes(): Uint8Array {
    const w = new Writer();
    w.value(this);
    return w.finish();
  }
  /** The compact serialisation (no whitespace). */
  stringify(): string {
    return String.UTF8.decode(this.toBytes().buffer);
  }
  toString(): string {
    return this.stringify();
  }
}

/** Document-level helpers that work on the bytes. */
export namespace Json {
  /** True when `bytes` is one valid JSON document (surrounding whitespace allowed). */
  export function isValid(bytes: Uint8Array): bool {
    return JsonValue.parseBytes(bytes) != null;
  }

  /**
   * The document with every whitespace byte outside strings removed, byte for byte otherwise
   * (escapes and number spellings kept); null when `bytes` is not valid JSON.
   */
  export function compact(bytes: Uint8Array): Uint8Array | null {
    if (!isValid(bytes)) return null;
    const out = new Uint8Array(bytes.length);
    let n = 0;
    let inString = false;
    for (let i = 0; i < bytes.length; i++) {
      const c = unchecked(bytes[i]);
      if (inString) {
        unchecked((out[n++] = c));
        if (c == 0x5c) {
          // a backslash: copy the escaped byte too
          i++;
          unchecked((out[n++] = bytes[i]));
        } else if (c == 0x22) {
          inString = false;
        }
      } else if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) {
        continue;
      } else {
        if (c == 0x22) inString = true;
        unchecked((out[n++] = c));
      }
    }
    return out.slice(0, n);
  }

  /** True when `bytes` contains whitespace outside strings (so `compact` would change it). */
  export function hasWhitespace(bytes: Uint8Array): bool {
    let inString = false;
    for (let i = 0; i < bytes.length; i++) {
      const c = unchecked(bytes[i]);
      if (inString) {
        if (c == 0x5c) i++;
        else if (c == 0x22) inString = false;
      } else if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) {
        return true;
      } else if (c == 0x22) {
        inString = true;
      }
    }
    return false;
  }
}

// ---- Parser ------------------------------------------------------------------------------------

function isWs(c: u8): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d;
}

function isDigit(c: i32): bool {
  return c >= 0x30 && c <= 0x39;
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

class Parser {
  pos: i32 = 0;
  depth: i32 = 0;

  constructor(private base: usize, private len: i32) {}

  /** The byte at `pos`, or -1 at the end. */
  @inline peek(): i32 {
    return this.pos < this.len ? <i32>load<u8>(this.base + <usize>this.pos) : -1;
  }

  skipWs(): void {
    while (this.pos < this.len && isWs(load<u8>(this.base + <usize>this.pos))) this.pos++;
  }

  document(): JsonValue | null {
    this.skipWs();
    const v = this.value();
    if (v == null) return null;
    this.skipWs();
    return this.pos == this.len ? v : null;
  }

  literal(word: string): bool {
    for (let i = 0; i < word.length; i++) {
      if (this.peek() != word.charCodeAt(i)) return false;
      this.pos++;
    }
    return true;
  }

  value(): JsonValue | null {
    const c = this.peek();
    if (c == 0x7b) return this.object();
    if (c == 0x5b) return this.array();
    if (c == 0x22) {
      const s = this.string();
      return s == null ? null : JsonValue.ofString(s);
    }
    if (c == 0x74) return this.literal("true") ? JsonValue.ofBool(true) : null;
    if (c == 0x66) return this.literal("false") ? JsonValue.ofBool(false) : null;
    if (c == 0x6e) return this.literal("null") ? JsonValue.ofNull() : null;
    if (c == 0x2d || isDigit(c)) return this.number();
    return null;
  }

  object(): JsonValue | null {
    if (++this.depth > MAX_DEPTH) return null;
    this.pos++; // {
    const obj = JsonValue.newObject();
    this.skipWs();
    if (this.peek() == 0x7d) {
      this.pos++;
      this.depth--;
      return obj;
    }
    while (true) {
      this.skipWs();
      if (this.peek() != 0x22) return null;
      const key = this.string();
      if (key == null) return null;
      this.skipWs();
      if (this.peek() != 0x3a) return null;
      this.pos++;
      this.skipWs();
      const v = this.value();
      if (v == null) return null;
      // Duplicate keys: the last one wins, as in most parsers.
      obj.set(key, v);
      this.skipWs();
      const c = this.peek();
      this.pos++;
      if (c == 0x2c) continue;
      if (c == 0x7d) break;
      return null;
    }
    this.depth--;
    return obj;
  }

  array(): JsonValue | null {
    if (++this.depth > MAX_DEPTH) return null;
    this.pos++; // [
    const arr = JsonValue.newArray();
    this.skipWs();
    if (this.peek() == 0x5d) {
      this.pos++;
      this.depth--;
      return arr;
    }
    while (true) {
      this.skipWs();
      const v = this.value();
      if (v == null) return null;
      arr.items.push(v);
      this.skipWs();
      const c = this.peek();
      this.pos++;
      if (c == 0x2c) continue;
      if (c == 0x5d) break;
      return null;
    }
    this.depth--;
    return arr;
  }

  number(): JsonValue | null {
    const start = this.pos;
    if (this.peek() == 0x2d) this.pos++;
    const first = this.peek();
    if (first == 0x30) {
      this.pos++;
    } else if (isDigit(first)) {
      while (isDigit(this.peek())) this.pos++;
    } else {
      return null;
    }
    if (this.peek() == 0x2e) {
      this.pos++;
      if (!isDigit(this.peek())) return null;
      while (isDigit(this.peek())) this.pos++;
    }
    const e = this.peek();
    if (e == 0x65 || e == 0x45) {
      this.pos++;
      const sign = this.peek();
      if (sign == 0x2b || sign == 0x2d) this.pos++;
      if (!isDigit(this.peek())) return null;
      while (isDigit(this.peek())) this.pos++;
    }
    const v = new JsonValue();
    v.kind = JsonKind.Number;
    v.number = String.UTF8.decodeUnsafe(this.base + <usize>start, <usize>(this.pos - start));
    return v;
  }

  /** A string at `pos` (on the opening quote), decoded; null when malformed. */
  string(): string | null {
    this.pos++; // "
    let out = "";
    let run = this.pos;
    while (true) {
      const c = this.peek();
      if (c < 0) return null;
      if (c == 0x22) {
        out += String.UTF8.decodeUnsafe(this.base + <usize>run, <usize>(this.pos - run));
        this.pos++;
        return out;
      }
      if (c < 0x20) return null;
      if (c != 0x5c) {
        this.pos++;
        continue;
      }
      out += String.UTF8.decodeUnsafe(this.base + <usize>run, <usize>(this.pos - run));
      this.pos++; // backslash
      const esc = this.peek();
      this.pos++;
      switch (esc) {
        case 0x22: out += "\""; break;
        case 0x5c: out += "\\"; break;
        case 0x2f: out += "/"; break;
        case 0x62: out += "\b"; break;
        case 0x66: out += "\f"; break;
        case 0x6e: out += "\n"; break;
        case 0x72: out += "\r"; break;
        case 0x74: out += "\t"; break;
        case 0x75: {
          let unit = 0;
          for (let i = 0; i < 4; i++) {
            const h = hexValue(this.peek());
            if (h < 0) return null;
            unit = (unit << 4) | h;
            this.pos++;
          }
          // UTF-16 code units: a surrogate pair written as two escapes joins up in the string.
          out += String.fromCharCode(unit);
          break;
        }
        default:
          return null;
      }
      run = this.pos;
    }
  }
}

// ---- Writer ------------------------------------------------------------------------------------

const HEX = "0123456789abcdef";

class Writer {
  buf: Uint8Array = new Uint8Array(64);
  len: i32 = 0;

  reserve(extra: i32): void {
    if (this.len + extra <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + extra) cap *= 2;
    const next = new Uint8Array(cap);
    memory.copy(next.dataStart, this.buf.dataStart, <usize>this.len);
    this.buf = next;
  }

  byte(c: u8): void {
    this.reserve(1);
    unchecked((this.buf[this.len++] = c));
  }

  raw(s: string): void {
    const utf8 = String.UTF8.encode(s);
    this.reserve(utf8.byteLength);
    memory.copy(this.buf.dataStart + <usize>this.len, changetype<usize>(utf8), <usize>utf8.byteLength);
    this.len += utf8.byteLength;
  }

  quoted(s: string): void {
    const utf8 = Uint8Array.wrap(String.UTF8.encode(s));
    this.reserve(utf8.length + 2);
    this.byte(0x22);
    for (let i = 0; i < utf8.length; i++) {
      const c = unchecked(utf8[i]);
      if (c == 0x22 || c == 0x5c) {
        this.byte(0x5c);
        this.byte(c);
      } else if (c >= 0x20) {
        this.byte(c);
      } else if (c == 0x0a) {
        this.byte(0x5c);
        this.byte(0x6e);
      } else if (c == 0x0d) {
        this.byte(0x5c);
        this.byte(0x72);
      } else if (c == 0x09) {
        this.byte(0x5c);
        this.byte(0x74);
      } else if (c == 0x08) {
        this.byte(0x5c);
        this.byte(0x62);
      } else if (c == 0x0c) {
        this.byte(0x5c);
        this.byte(0x66);
      } else {
        this.raw("\\u00");
        this.byte(<u8>HEX.charCodeAt(c >> 4));
        this.byte(<u8>HEX.charCodeAt(c & 15));
      }
    }
    this.byte(0x22);
  }

  value(v: JsonValue): void {
    switch (v.kind) {
      case JsonKind.Null:
        this.raw("null");
        break;
      case JsonKind.Bool:
        this.raw(v.bool ? "true" : "false");
        break;
      case JsonKind.Number:
        this.raw(v.number);
        break;
      case JsonKind.String:
        this.quoted(v.string);
        break;
      case JsonKind.Array:
        this.byte(0x5b);
        for (let i = 0; i < v.items.length; i++) {
          if (i > 0) this.byte(0x2c);
          this.value(v.items[i]);
        }
        this.byte(0x5d);
        break;
      case JsonKind.Object:
        this.byte(0x7b);
        for (let i = 0; i < v.keys.length; i++) {
          if (i > 0) this.byte(0x2c);
          this.quoted(v.keys[i]);
          this.byte(0x3a);
          this.value(v.values[i]);
        }
        this.byte(0x7d);
        break;
    }
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}
