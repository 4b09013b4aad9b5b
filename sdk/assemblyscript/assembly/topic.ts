// MQTT topic names and filters (MQTT 5 §4.7): validity, matching and coverage. Same semantics as
// `sluice_sdk::topic`.

/** True when `topic` is a valid topic name to publish to: not empty, no wildcards, no NUL. */
export function validTopic(topic: string): bool {
  if (topic.length == 0 || String.UTF8.byteLength(topic) > 65535) return false;
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i);
    if (c == 0x2b || c == 0x23 || c == 0) return false;
  }
  return true;
}

/** True when `filter` is a valid subscription filter: `+` fills a whole level, `#` is last, no NUL. */
export function validFilter(filter: string): bool {
  if (filter.length == 0 || String.UTF8.byteLength(filter) > 65535 || filter.includes("\0")) return false;
  const levels = filter.split("/");
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level == "#") {
      if (i != levels.length - 1) return false;
    } else if (level != "+" && (level.includes("+") || level.includes("#"))) {
      return false;
    }
  }
  return true;
}

/**
 * True when a message published to `topic` is delivered to a subscription to `filter`. Topics
 * starting with `$` are not matched by a leading wildcard.
 */
export function matches(filter: string, topic: string): bool {
  if (topic.startsWith("$") && (filter.startsWith("+") || filter.startsWith("#"))) return false;
  const f = filter.split("/");
  const t = topic.split("/");
  const n = max(f.length, t.length);
  for (let i = 0; i <= n; i++) {
    const fi = i < f.length;
    const ti = i < t.length;
    if (fi && f[i] == "#") return true;
    if (!fi || !ti) return !fi && !ti;
    if (f[i] != "+" && f[i] != t[i]) return false;
  }
  return false;
}

/**
 * True when every topic matched by `filter` is also matched by `pattern`: `a/#` covers `a/+/c`
 * and `a`; `a/+` does not cover `a/#`.
 */
export function covers(pattern: string, filter: string): bool {
  if (filter.startsWith("$") != pattern.startsWith("$") && (pattern.startsWith("+") || pattern.startsWith("#"))) {
    return false;
  }
  const p = pattern.split("/");
  const f = filter.split("/");
  const n = max(p.length, f.length);
  for (let i = 0; i <= n; i++) {
    const pi = i < p.length;
    const fi = i < f.length;
    if (pi && p[i] == "#") return true;
    if (fi && f[i] == "#") return false;
    if (!pi || !fi) return !pi && !fi;
    if (p[i] == "+") continue;
    if (p[i] != f[i] || f[i] == "+") return false;
  }
  return false;
}
