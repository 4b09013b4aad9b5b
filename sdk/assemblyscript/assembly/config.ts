// The rule's read-only configuration: the YAML mapping under the rule's `config:` key in the
// gateway config (or the manifest's defaults), flattened to dotted keys (`users.0.name`).

import { isDigits } from "./code";
import { KeyValue } from "./types";

/**
 * The read-only configuration of a rule. The typed getters never fail: a value of the wrong type
 * gives the default and records a message in `error`, so a constructor checks once at the end:
 *
 * ```ts
 * const prefix = config.getString("prefix", "devices");
 * const qos = config.getInt("qos", 0);
 * if (config.error != null) return Init.refuse(config.error!);
 * ```
 */
export class Config {
  /** The first problem a typed getter found (names the key and the fix), or null. */
  error: string | null = null;

  constructor(
    /** Every entry, in the order written. */
    public entries: KeyValue[] = [],
  ) {}

  /** The value of a dotted key, or null. */
  get(key: string): string | null {
    for (let i = 0; i < this.entries.length; i++) {
      if (this.entries[i].key == key) return this.entries[i].value;
    }
    return null;
  }

  /** True when the key is present. */
  has(key: string): bool {
    return this.get(key) != null;
  }

  /** A string key, `dflt` when absent. */
  getString(key: string, dflt: string): string {
    const v = this.get(key);
    return v == null ? dflt : v;
  }

  /** A boolean key (`true`/`false`), `dflt` when absent or invalid (invalid sets `error`). */
  getBool(key: string, dflt: bool): bool {
    const v = this.get(key);
    if (v == null) return dflt;
    if (v == "true") return true;
    if (v == "false") return false;
    this.fail(key + ": expected true or false, found \"" + v + "\"");
    return dflt;
  }

  /** An integer key, `dflt` when absent or invalid (invalid sets `error`). */
  getInt(key: string, dflt: i64): i64 {
    const v = this.get(key);
    if (v == null) return dflt;
    const negative = v.startsWith("-");
    const digits = negative ? v.substring(1) : v;
    if (!isDigits(digits) || digits.length > 18) {
      this.fail(key + ": expected an integer, found \"" + v + "\"");
      return dflt;
    }
    const n = I64.parseInt(digits);
    return negative ? -n : n;
  }

  /** The number of items of the list at `key` (`users` has items `users.0.…`, `users.1.…`). */
  listLen(key: string): i32 {
    const prefix = key + ".";
    let len = 0;
    for (let i = 0; i < this.entries.length; i++) {
      const k = this.entries[i].key;
      if (!k.startsWith(prefix)) continue;
      let rest = k.substring(prefix.length);
      const dot = rest.indexOf(".");
      if (dot >= 0) rest = rest.substring(0, dot);
      if (isDigits(rest) && rest.length < 9) {
        const n = I32.parseInt(rest) + 1;
        if (n > len) len = n;
      }
    }
    return len;
  }

  /** Records the first problem found. */
  fail(message: string): void {
    if (this.error == null) this.error = message;
  }
}
