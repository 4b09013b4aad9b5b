// hooks: a well-behaved rule that exercises every hook and every verdict of the AssemblyScript
// SDK, so that host/tests/assemblyscript.rs can check each encoding through the real host. Built
// beside fault-as by `npm run asbuild` (build/hooks.raw.wasm).
//
// authenticate: path `auth`, query `v=` picks the verdict; `v=echo` allows with a client id made
//   from the decoded request.
// route: the first path segment names the verdict (`publish`, `set`, `sub`, …); `echo` answers
//   with a description of the decoded request, `who` with the principal, `config` with config.
// authorize: topics under `allow/` are allowed, under `deny/` denied; `pubonly/` is denied for
//   subscribe.
// uplink / downlink: the payload names the verdict (`drop`, `reject`, `replace`).

import {
  Access, Auth, Authz, Code, Config, Downlink, Init, KeyValue, Principal, Request, Route, Rule, Transform, Uplink,
  configValue, init,
} from "@sluice/sdk";

export {
  sluice_abi_v1, sluice_authenticate, sluice_route, sluice_authorize, sluice_uplink, sluice_downlink,
} from "@sluice/sdk/exports";

function orDash(s: string | null): string {
  return s == null ? "-" : s;
}

function num(n: i64): string {
  return n < 0 ? "-" : n.toString();
}

class Hooks extends Rule {
  constructor(private config: Config) {
    super();
  }

  authenticate(req: Request): Auth {
    if (req.path.length == 0 || req.path[0] != "auth") return Auth.continue();
    const v = req.queryValue(["v"]);
    if (v == "allow") return Auth.allow("dev1", "user1", [new KeyValue("tenant", "acme"), new KeyValue("tier", "gold")]);
    if (v == "allow-bare") return Auth.allow("dev2");
    if (v == "session") return Auth.session("dev3", "tok3");
    if (v == "deny") return Auth.deny(Code.FORBIDDEN, "denied by hooks");
    if (v == "deny-default") return Auth.deny();
    if (v == "echo") return Auth.allow(describe(req));
    return Auth.continue();
  }

  route(req: Request, who: Principal): Route {
    if (req.path.length == 0) return Route.continue();
    const what = req.path[0];
    if (what == "publish") {
      return Route.publish("p/" + who.clientId, 1, true, 60, [new KeyValue("k", "v"), new KeyValue("k2", "")]);
    }
    if (what == "publish-default") return Route.publish("p/default");
    if (what == "set") return Route.setValue("v/x", 2, false, 30);
    if (what == "sub") return Route.subscribe("s/+/x", 1);
    if (what == "sub-default") return Route.subscribe("s/#");
    if (what == "unsub") return Route.unsubscribe("s/#");
    if (what == "read") return Route.read("r/x");
    if (what == "observe") return Route.observeValue("o/x", 0);
    if (what == "observe-default") return Route.observeValue("o/y");
    if (what == "delete") return Route.delete("d/x");
    if (what == "connect") return Route.connect();
    if (what == "heartbeat") return Route.heartbeat();
    if (what == "disconnect") return Route.disconnect();
    if (what == "respond") return Route.respondText(Code.CONTENT, "hello", 0);
    if (what == "respond-empty") return Route.respond(Code.VALID);
    if (what == "reject") return Route.reject(Code.NOT_FOUND, "no such thing");
    if (what == "echo") return Route.respondText(Code.CONTENT, describe(req));
    if (what == "who") {
      const attrs: string[] = [];
      for (let i = 0; i < who.attributes.length; i++) attrs.push(who.attributes[i].key + "=" + who.attributes[i].value);
      return Route.respondText(Code.CONTENT, who.clientId + "|" + orDash(who.username) + "|" + attrs.join(","));
    }
    if (what == "config") {
      const c = this.config;
      return Route.respondText(
        Code.CONTENT,
        orDash(c.get("greeting")) + "|" + orDash(configValue("greeting")) + "|" + c.listLen("items").toString() + "|" +
          c.getInt("n", -1).toString() + "|" + (c.getBool("flag", false) ? "true" : "false"),
      );
    }
    return Route.continue();
  }

  authorize(who: Principal, access: Access, topic: string): Authz {
    if (topic.startsWith("allow/")) return Authz.Allow;
    if (topic.startsWith("deny/")) return Authz.Deny;
    if (topic.startsWith("pubonly/")) return access == Access.Subscribe ? Authz.Deny : Authz.Allow;
    return Authz.Continue;
  }

  uplink(msg: Uplink, who: Principal): Transform {
    const text = String.UTF8.decode(msg.payload.buffer);
    if (text == "drop") return Transform.drop();
    if (text == "reject") return Transform.reject(Code.BAD_REQUEST, "rejected by hooks");
    if (text == "replace") {
      return Transform.replaceText(msg.topic + "|" + who.clientId + "|" + num(msg.contentFormat), 0);
    }
    return Transform.continue();
  }

  downlink(msg: Downlink, who: Principal): Transform {
    const text = String.UTF8.decode(msg.payload.buffer);
    if (text == "drop") return Transform.drop();
    if (text == "replace") {
      const props: string[] = [];
      for (let i = 0; i < msg.userProperties.length; i++) {
        props.push(msg.userProperties[i].key + "=" + msg.userProperties[i].value);
      }
      return Transform.replaceText(
        msg.topic + "|" + orDash(msg.contentType) + "|" + props.join(",") + "|" + who.clientId,
        50,
      );
    }
    return Transform.continue();
  }
}

/** The decoded request, one field after another, `|`-separated. */
function describe(req: Request): string {
  const id = req.identity;
  return [
    (<i32>req.method).toString(),
    (<i32>req.type).toString(),
    req.path.join("/"),
    req.query.join("&"),
    num(req.contentFormat),
    num(req.accept),
    num(req.observe),
    num(req.maxAge),
    req.peer,
    orDash(id.pskIdentity),
    orDash(id.certSubject),
    id.certSans.join(","),
    orDash(id.certFingerprint),
    req.payloadText(),
  ].join("|");
}

function create(config: Config): Init {
  config.getBool("refuse", false);
  if (config.error != null) return Init.refuse(config.error!);
  if (config.getBool("refuse", false)) return Init.refuse("refuse: told to refuse");
  return Init.ok(new Hooks(config));
}

export function sluice_init(): i32 {
  return init(create);
}
