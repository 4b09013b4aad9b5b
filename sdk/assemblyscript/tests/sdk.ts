// A rule that exposes the SDK's helpers to tests/sdk.test.mjs: route's first path segment names
// a helper, the payload or the query entries are its input, and the answer (2.05) its output.

import {
  Access, Auth, Authz, Code, Config, ContentFormat, Downlink, Identity, Init, Json, JsonKind, JsonValue, KeyValue, Level,
  MAX_DEPTH, MessageType, Method, NONE, Principal, Publish, Request, Route, Rule, Transform, Uplink, configValue, covers,
  init, isDigits, logDebug, logError, logInfo, logWarn, logWrite, lookup, matches, nowMs, validFilter, validTopic,
} from "../assembly/index";

/** Touches every API item (AssemblyScript only compiles what is used), and checks a few results. */
function api(req: Request, who: Principal): string {
  const out: string[] = [];
  const p = Publish.to("a/b").withQos(1).withRetain(true).withExpiry(9).withProperty("k", "v");
  out.push(Route.publishMessage(p).kind.toString());
  out.push(Route.setValueMessage(p).kind.toString());
  out.push(Route.respond(Code.CONTENT, new Uint8Array(2), ContentFormat.CBOR).kind.toString());
  out.push(Auth.allowPrincipal(new Principal("x", "u", [new KeyValue("t", "1")])).kind.toString());
  out.push(Transform.replace(new Uint8Array(1), ContentFormat.OCTET_STREAM).kind.toString());
  out.push(Transform.replaceText("x").contentFormat.toString());
  const principal = new Principal("c", null, [new KeyValue("tenant", "acme")]);
  const tenant = principal.attribute("tenant");
  out.push(tenant == null ? "-" : tenant);
  const none = lookup(principal.attributes, "nope");
  out.push(none == null ? "null" : none);
  const id = new Identity();
  out.push(id.isAuthenticated() ? "auth" : "anon");
  id.pskIdentity = "p";
  out.push(id.isAuthenticated() ? "auth" : "anon");
  out.push(req.pathString());
  out.push(req.method == Method.Get && req.type == MessageType.Confirmable ? "GET CON" : "?");
  out.push(who.clientId);
  out.push((<i32>Access.Subscribe).toString() + (<i32>Authz.Deny).toString());
  out.push(NONE.toString() + "|" + MAX_DEPTH.toString() + "|" + (<i32>JsonKind.Object).toString() + "|" + (<i32>Level.Trace).toString());
  out.push(isDigits("0123") && !isDigits("") && !isDigits("1a") ? "digits" : "?");
  out.push(nowMs() > 0 ? "now" : "?");
  const missing = configValue("no.such.key");
  out.push(missing == null ? "null" : missing);
  out.push(Code.classOf(Code.NOT_FOUND).toString() + "." + Code.detailOf(Code.NOT_FOUND).toString());
  const up = new Uplink();
  const down = new Downlink();
  out.push(up.contentFormat.toString() + down.userProperties.length.toString());
  out.push(JsonValue.ofNull().isNull() && !JsonValue.newObject().isArray() ? "json" : "?");
  const parsed = JsonValue.parse("[1.25]");
  out.push(parsed == null ? "?" : parsed.items[0].asF64().toString());
  out.push(Json.isValid(Uint8Array.wrap(String.UTF8.encode("{}"))) ? "valid" : "?");
  const obj = JsonValue.newObject().set("a", JsonValue.ofInteger(1));
  out.push(obj.has("a") && !obj.has("b") ? obj.toString() : "?");
  logError("e");
  logWarn("w");
  logInfo("i");
  logDebug("d");
  logWrite(Level.Trace, "t");
  return out.join(" ");
}

export { sluice_abi_v1, sluice_authorize, sluice_downlink, sluice_route, sluice_uplink } from "../assembly/exports";

function yes(b: bool): string {
  return b ? "true" : "false";
}

class Helpers extends Rule {
  constructor(private config: Config) {
    super();
  }

  route(req: Request, who: Principal): Route {
    const what = req.path[0];
    const q = req.query;
    if (what == "json") {
      const v = JsonValue.parseBytes(req.payload);
      return Route.respondText(Code.CONTENT, v == null ? "invalid" : v.stringify());
    }
    if (what == "json-kind") {
      const v = JsonValue.parseBytes(req.payload);
      return Route.respondText(Code.CONTENT, v == null ? "invalid" : (<i32>v.kind).toString() + ":" + v.length.toString());
    }
    if (what == "json-edit") {
      const v = JsonValue.parseBytes(req.payload);
      if (v == null || !v.isObject()) return Route.respondText(Code.CONTENT, "not an object");
      v.set("added", JsonValue.ofString("x\"y\n\u0001é😀"));
      v.set("n", JsonValue.ofNumber(1.5));
      v.set("i", JsonValue.ofInteger(-42));
      v.set("f", JsonValue.ofNumber(3.0));
      v.set("nan", JsonValue.ofNumber(NaN));
      v.set("list", JsonValue.newArray().push(JsonValue.ofBool(true)).push(JsonValue.ofNull()));
      v.remove("gone");
      const s = v.get("s");
      const str: string | null = s == null ? null : s.asString();
      v.set("s_copy", JsonValue.ofString(str == null ? "-" : str));
      return Route.respondText(Code.CONTENT, v.stringify());
    }
    if (what == "compact") {
      const c = Json.compact(req.payload);
      return Route.respondText(Code.CONTENT, c == null ? "invalid" : String.UTF8.decode(c.buffer) + "|" + yes(Json.hasWhitespace(req.payload)));
    }
    if (what == "topic") return Route.respondText(Code.CONTENT, yes(validTopic(q[0])) + "|" + yes(validFilter(q[0])));
    if (what == "matches") return Route.respondText(Code.CONTENT, yes(matches(q[0], q[1])));
    if (what == "covers") return Route.respondText(Code.CONTENT, yes(covers(q[0], q[1])));
    if (what == "code") {
      const code = <u8>I32.parseInt(q[0]);
      return Route.respondText(Code.CONTENT, Code.format(code) + "|" + Code.make(4, 4).toString());
    }
    if (what == "mime") {
      return Route.respondText(Code.CONTENT, ContentFormat.toMime(I32.parseInt(q[0])) + "|" + ContentFormat.fromMime(q[1]).toString());
    }
    if (what == "config") {
      const c = this.config;
      const n = c.getInt("n", -1);
      const bad = c.getInt("bad", 5);
      return Route.respondText(
        Code.CONTENT,
        c.listLen("users").toString() + "|" + n.toString() + "|" + bad.toString() + "|" + (c.error == null ? "-" : c.error!) + "|" +
          c.getString("missing", "dflt") + "|" + yes(c.has("users.1.name")),
      );
    }
    if (what == "api") return Route.respondText(Code.CONTENT, api(req, who));
    if (what == "request") return Route.respondText(Code.CONTENT, describe(req, who));
    if (what == "query") {
      const v = req.queryValue(["c", "clientid"]);
      return Route.respondText(Code.CONTENT, v == null ? "null" : v);
    }
    return Route.continue();
  }

  authorize(who: Principal, access: Access, topic: string): Authz {
    if (topic == "own/" + who.clientId && access == Access.Subscribe) return Authz.Allow;
    return topic.startsWith("deny/") ? Authz.Deny : Authz.Continue;
  }

  uplink(msg: Uplink, who: Principal): Transform {
    // Echoes what the hook read: topic, payload length and last byte, format, client id.
    const last = msg.payload.length > 0 ? msg.payload[msg.payload.length - 1].toString() : "-";
    return Transform.replaceText(
      msg.topic + "|" + msg.payload.length.toString() + "|" + last + "|" + msg.contentFormat.toString() + "|" + who.clientId,
    );
  }

  downlink(msg: Downlink, who: Principal): Transform {
    const ct = msg.contentType;
    const props = msg.userProperties.map<string>((p: KeyValue) => p.key + "=" + p.value).join(",");
    return Transform.replaceText(msg.topic + "|" + String.UTF8.decode(msg.payload.buffer) + "|" + (ct == null ? "null" : ct!) + "|" + props + "|" + who.clientId);
  }
}

/** Every field of a request and principal, as one line. */
function describe(req: Request, who: Principal): string {
  const id = req.identity;
  const psk = id.pskIdentity;
  const attrs = who.attributes.map<string>((p: KeyValue) => p.key + "=" + p.value).join(",");
  const user = who.username;
  return [
    (<i32>req.method).toString(), (<i32>req.type).toString(), req.path.join("/"), req.query.join("&"),
    req.contentFormat.toString(), req.accept.toString(), req.observe.toString(), req.maxAge.toString(), req.peer,
    psk == null ? "null" : psk!, id.certSans.join(","), req.payload.length.toString(),
    who.clientId, user == null ? "null" : user!, attrs,
  ].join("|");
}

function create(config: Config): Init {
  return Init.ok(new Helpers(config));
}

export function sluice_init(): i32 {
  return init(create);
}
