// enrich-as: a Sluice rule in AssemblyScript that rewrites topics and enriches JSON.
//
// * authenticate: a `/t/…` request names its device by its DTLS identity (PSK identity or
//   certificate subject) or else by `c=`/`clientid=` in the query (4.00 without one); other paths
//   are left to the next rule (`builtin:emqx` authenticates `/mqtt/…` and `/ps/…`).
// * route: `/t/{a}/{b}` is published to `{prefix}/{client_id}/{a}/{b}` (config `prefix`, default
//   `devices`); other paths pass to the next rule.
// * uplink: a JSON object payload gains `"device": client_id` and `"received_at": <ms since the
//   epoch>` (config `timestamp: false` leaves the time out, which keeps test vectors exact);
//   anything else passes unchanged.
// * downlink: a JSON payload is compacted (whitespace outside strings removed) on its way to the
//   device; anything else passes unchanged.

import {
  Auth, Code, Config, ContentFormat, Downlink, Init, Json, JsonValue, Principal, Request, Route, Rule, Transform,
  Uplink, init, nowMs, validTopic,
} from "@sluice/sdk";

export {
  sluice_abi_v1, sluice_authenticate, sluice_route, sluice_uplink, sluice_downlink,
} from "@sluice/sdk/exports";

class Enrich extends Rule {
  constructor(private prefix: string, private timestamp: bool) {
    super();
  }

  authenticate(req: Request): Auth {
    if (req.path.length == 0 || req.path[0] != "t") return Auth.continue();
    const id = req.identity;
    const proven = id.pskIdentity != null ? id.pskIdentity : id.certSubject;
    if (proven != null && proven.length > 0) return Auth.allow(proven);
    const named = req.queryValue(["c", "clientid"]);
    if (named == null || named.length == 0) return Auth.deny(Code.BAD_REQUEST, "missing client id: add c=<client id> to the URL");
    return Auth.allow(named);
  }

  route(req: Request, who: Principal): Route {
    const path = req.path;
    if (path.length != 3 || path[0] != "t") return Route.continue();
    // No rule before this one named the device (builtin:emqx does, from `c=` or a login).
    if (who.clientId.length == 0) return Route.reject(Code.UNAUTHORIZED, "no client id: add c=<client id> to the URL");
    const topic = this.prefix + "/" + who.clientId + "/" + path[1] + "/" + path[2];
    // A client id or segment with `+`, `#` or NUL would make an invalid topic: say so.
    if (!validTopic(topic)) return Route.reject(Code.BAD_REQUEST, "invalid topic: " + topic);
    return Route.publish(topic);
  }

  uplink(msg: Uplink, who: Principal): Transform {
    const cf = msg.contentFormat;
    if (cf >= 0 && cf != ContentFormat.JSON) return Transform.continue();
    const doc = JsonValue.parseBytes(msg.payload);
    if (doc == null || !doc.isObject()) return Transform.continue();
    doc.set("device", JsonValue.ofString(who.clientId));
    if (this.timestamp) doc.set("received_at", JsonValue.ofInteger(nowMs()));
    return Transform.replace(doc.toBytes(), ContentFormat.JSON);
  }

  downlink(msg: Downlink, who: Principal): Transform {
    if (!Json.hasWhitespace(msg.payload)) return Transform.continue();
    const compact = Json.compact(msg.payload);
    return compact == null ? Transform.continue() : Transform.replace(compact);
  }
}

function create(config: Config): Init {
  const prefix = config.getString("prefix", "devices");
  const timestamp = config.getBool("timestamp", true);
  if (config.error != null) return Init.refuse(config.error!);
  if (prefix.length == 0 || !validTopic(prefix)) {
    return Init.refuse("prefix: \"" + prefix + "\" is not a valid topic prefix (no +, # or empty)");
  }
  return Init.ok(new Enrich(prefix, timestamp));
}

export function sluice_init(): i32 {
  return init(create);
}
