// The rule API: what a hook receives and what it answers. Mirrors the Rust SDK (`sluice-sdk`):
// the same types, the same verdicts, the same meaning; see sdk/rust/src/lib.rs.
//
// Optional numbers (Content-Format, QoS, expiry, …) use `NONE` (-1) for "absent", because
// AssemblyScript has no nullable integers.

import * as abi from "./abi";
import { Code, NONE } from "./code";
import { Config } from "./config";

/** A `key`/`value` pair: a principal's attribute, an MQTT v5 user property, a config entry. */
export class KeyValue {
  constructor(public key: string, public value: string) {}
}

/** The value of the first pair whose key is `key`, or null. */
export function lookup(pairs: KeyValue[], key: string): string | null {
  for (let i = 0; i < pairs.length; i++) {
    if (pairs[i].key == key) return pairs[i].value;
  }
  return null;
}

/** A CoAP request method: the code detail (RFC 7252 §12.1.1, RFC 8132). */
export enum Method {
  Get = 1,
  Post = 2,
  Put = 3,
  Delete = 4,
  Fetch = 5,
  Patch = 6,
  IPatch = 7,
}

/** Whether the request came as a Confirmable or a Non-confirmable message. */
export enum MessageType {
  /** CON: the device waits for an acknowledgement. */
  Confirmable = 0,
  /** NON: fire and forget. */
  NonConfirmable = 1,
}

/** What the transport proved about the device (DTLS). Empty over plain UDP. */
export class Identity {
  /** The DTLS PSK identity the device used. */
  pskIdentity: string | null = null;
  /** The client certificate's subject common name. */
  certSubject: string | null = null;
  /** The client certificate's subject alternative names. */
  certSans: string[] = [];
  /** SHA-256 of the client certificate (DER), lowercase hex. */
  certFingerprint: string | null = null;

  /** True when the transport authenticated the device (PSK or certificate). */
  isAuthenticated(): bool {
    return this.pskIdentity != null || this.certSubject != null || this.certFingerprint != null;
  }
}

/** A complete CoAP request (block-wise bodies already reassembled). */
export class Request {
  /** The method. */
  method: Method = Method.Get;
  /** CON or NON. */
  type: MessageType = MessageType.Confirmable;
  /** Uri-Path segments, percent-decoded (`/mqtt/a%2Fb` gives `["mqtt", "a/b"]`). */
  path: string[] = [];
  /** Uri-Query entries as sent, `key=value` or `key`. */
  query: string[] = [];
  /** The Content-Format option, or `NONE`. */
  contentFormat: i32 = NONE;
  /** The Accept option, or `NONE`. */
  accept: i32 = NONE;
  /** The Observe option (0 registers, 1 deregisters), or `NONE`. */
  observe: i64 = NONE;
  /** The Max-Age option in seconds, or `NONE`. */
  maxAge: i64 = NONE;
  /** The device's address, `ip:port`. */
  peer: string = "";
  /** What DTLS proved about the device. */
  identity: Identity = new Identity();
  /** The body. */
  payload: Uint8Array = new Uint8Array(0);

  /** The value of the first query entry whose key is one of `keys` (`c=dev1` gives `dev1`). */
  queryValue(keys: string[]): string | null {
    for (let i = 0; i < this.query.length; i++) {
      const entry = this.query[i];
      const eq = entry.indexOf("=");
      const key = eq < 0 ? entry : entry.substring(0, eq);
      if (keys.includes(key)) return eq < 0 ? "" : entry.substring(eq + 1);
    }
    return null;
  }

  /** The Uri-Path joined with `/`, without a leading slash. */
  pathString(): string {
    return this.path.join("/");
  }

  /** The payload decoded as UTF-8. */
  payloadText(): string {
    return String.UTF8.decodeUnsafe(this.payload.dataStart, <usize>this.payload.length);
  }
}

/** Who the device is, once authenticated. */
export class Principal {
  constructor(
    /** The client id; MQTT topics and ACLs refer to it as `${clientid}`. */
    public clientId: string = "",
    /** The user name, if any. */
    public username: string | null = null,
    /** Extra attributes later hooks may read (for example a tenant). */
    public attributes: KeyValue[] = [],
  ) {}

  /** The value of an attribute, or null. */
  attribute(key: string): string | null {
    return lookup(this.attributes, key);
  }
}

/** What `Rule.authorize` is asked about. */
export enum Access {
  /** Publishing to a topic (also set value and delete). */
  Publish = 0,
  /** Subscribing to a filter (also read). */
  Subscribe = 1,
}

/** The verdict of `Rule.authorize`. */
export enum Authz {
  /** No opinion: the next rule decides; allowed when every rule passes. */
  Continue = abi.hook.AUTHZ_CONTINUE,
  /** Permitted. */
  Allow = abi.hook.AUTHZ_ALLOW,
  /** Not permitted: the gateway answers 4.03. */
  Deny = abi.hook.AUTHZ_DENY,
}

/** A message on its way up (CoAP → MQTT), given to `Rule.uplink`. */
export class Uplink {
  /** The MQTT topic chosen by `route`. */
  topic: string = "";
  /** The CoAP payload. */
  payload: Uint8Array = new Uint8Array(0);
  /** The request's Content-Format, or `NONE`. */
  contentFormat: i32 = NONE;
}

/** A message on its way down (MQTT → CoAP notification), given to `Rule.downlink`. */
export class Downlink {
  /** The MQTT topic it was published to. */
  topic: string = "";
  /** The MQTT payload. */
  payload: Uint8Array = new Uint8Array(0);
  /** The MQTT v5 content type, if set. */
  contentType: string | null = null;
  /** The MQTT v5 user properties. */
  userProperties: KeyValue[] = [];
}

/** The verdict of `Rule.authenticate`: build it with `Auth.continue()`, `allow`, `session`, `deny`. */
export class Auth {
  private constructor(
    /** The ABI verdict number (`abi.hook.AUTH_*`). */
    public kind: i32,
    /** Allow: who the device is. */
    public principal: Principal | null = null,
    /** Session: the client id the device claims. */
    public clientId: string = "",
    /** Session: the token the gateway gave it at connect. */
    public token: string = "",
    /** Deny: the response code. */
    public code: u8 = Code.UNAUTHORIZED,
    /** Deny: a diagnostic for the device's owner (never a secret). */
    public reason: string = "",
  ) {}

  /** No opinion: the next rule decides. */
  static continue(): Auth {
    return new Auth(abi.hook.AUTH_CONTINUE);
  }
  /** The device is `clientId` (and `username`, with `attributes`). */
  static allow(clientId: string, username: string | null = null, attributes: KeyValue[] = []): Auth {
    return new Auth(abi.hook.AUTH_ALLOW, new Principal(clientId, username, attributes));
  }
  /** The device is `who`. */
  static allowPrincipal(who: Principal): Auth {
    return new Auth(abi.hook.AUTH_ALLOW, who);
  }
  /**
   * Connection mode (EMQX 5): allow if the gateway holds a session for `clientId` whose token is
   * `token`; otherwise the gateway answers 4.01.
   */
  static session(clientId: string, token: string): Auth {
    return new Auth(abi.hook.AUTH_SESSION, null, clientId, token);
  }
  /** Refuse: normally 4.01; 4.00 for a malformed request. */
  static deny(code: u8 = Code.UNAUTHORIZED, reason: string = ""): Auth {
    return new Auth(abi.hook.AUTH_DENY, null, "", "", code, reason);
  }
}

/** A publish to MQTT. */
export class Publish {
  constructor(
    /** The MQTT topic (no wildcards). */
    public topic: string,
    /** QoS 0, 1 or 2; `NONE` takes the gateway's `publish_qos` setting. */
    public qos: i32 = NONE,
    /** The MQTT retain flag. */
    public retain: bool = false,
    /** MQTT v5 Message Expiry Interval in seconds, or `NONE`. */
    public expiry: i64 = NONE,
    /** MQTT v5 user properties. */
    public userProperties: KeyValue[] = [],
  ) {}

  /** A publish to `topic` with the gateway's defaults. */
  static to(topic: string): Publish {
    return new Publish(topic);
  }
  /** Sets the QoS. */
  withQos(qos: i32): Publish {
    this.qos = qos;
    return this;
  }
  /** Sets the retain flag. */
  withRetain(retain: bool): Publish {
    this.retain = retain;
    return this;
  }
  /** Sets the message expiry, in seconds. */
  withExpiry(seconds: i64): Publish {
    this.expiry = seconds;
    return this;
  }
  /** Adds an MQTT v5 user property. */
  withProperty(key: string, value: string): Publish {
    this.userProperties.push(new KeyValue(key, value));
    return this;
  }
}

/** The action of a request, the verdict of `Rule.route`: `Route.publish(…)`, `Route.continue()`, … */
export class Route {
  private constructor(
    /** The ABI verdict number (`abi.hook.ROUTE_*`). */
    public kind: i32,
    /** Publish, set value: the message. */
    public message: Publish | null = null,
    /** Subscribe, unsubscribe (the filter), read, observe value, delete (the topic). */
    public topic: string = "",
    /** Subscribe, observe value: the QoS or `NONE`. */
    public qos: i32 = NONE,
    /** Respond, reject: the response code. */
    public code: u8 = 0,
    /** Respond: the body. */
    public payload: Uint8Array | null = null,
    /** Respond: the Content-Format of the body, or `NONE`. */
    public contentFormat: i32 = NONE,
    /** Reject: a diagnostic (never a secret). */
    public reason: string = "",
  ) {}

  /** No opinion: the next rule decides; 4.04 when no rule routes. */
  static continue(): Route {
    return new Route(abi.hook.ROUTE_CONTINUE);
  }
  /** Publish to `topic`; answer 2.04 Changed. */
  static publish(topic: string, qos: i32 = NONE, retain: bool = false, expiry: i64 = NONE, userProperties: KeyValue[] = []): Route {
    return new Route(abi.hook.ROUTE_PUBLISH, new Publish(topic, qos, retain, expiry, userProperties));
  }
  /** Publish `message` (built with `Publish.to(topic).withQos(1)…`). */
  static publishMessage(message: Publish): Route {
    return new Route(abi.hook.ROUTE_PUBLISH, message);
  }
  /**
   * Publish as the topic's value (retained, expiring after `expiry`, default the request's
   * Max-Age or 60 s); 2.01 Created when the topic had no value, else 2.04 Changed.
   */
  static setValue(topic: string, qos: i32 = NONE, retain: bool = false, expiry: i64 = NONE, userProperties: KeyValue[] = []): Route {
    return new Route(abi.hook.ROUTE_SET_VALUE, new Publish(topic, qos, retain, expiry, userProperties));
  }
  /** Set value with a `Publish` built by hand. */
  static setValueMessage(message: Publish): Route {
    return new Route(abi.hook.ROUTE_SET_VALUE, message);
  }
  /** Observe: subscribe to `filter` (wildcards allowed) and notify the device; 2.05. */
  static subscribe(filter: string, qos: i32 = NONE): Route {
    return new Route(abi.hook.ROUTE_SUBSCRIBE, null, filter, qos);
  }
  /** End the observation of `filter`; 2.05. */
  static unsubscribe(filter: string): Route {
    return new Route(abi.hook.ROUTE_UNSUBSCRIBE, null, filter);
  }
  /** Read the topic's value: 2.05 with payload; 4.04 if none. */
  static read(topic: string): Route {
    return new Route(abi.hook.ROUTE_READ, null, topic);
  }
  /** Observe a topic's value: like subscribe, with the current value in the registration response. */
  static observeValue(topic: string, qos: i32 = NONE): Route {
    return new Route(abi.hook.ROUTE_OBSERVE_VALUE, null, topic, qos);
  }
  /** Clear the topic's value: 2.02 Deleted, 4.04 if it had none. */
  static delete(topic: string): Route {
    return new Route(abi.hook.ROUTE_DELETE, null, topic);
  }
  /** Connection mode: open a session for the principal; 2.01 with the token as payload. */
  static connect(): Route {
    return new Route(abi.hook.ROUTE_CONNECT);
  }
  /** Connection mode: keep the session alive; 2.04. */
  static heartbeat(): Route {
    return new Route(abi.hook.ROUTE_HEARTBEAT);
  }
  /** Connection mode: close the session; 2.02. */
  static disconnect(): Route {
    return new Route(abi.hook.ROUTE_DISCONNECT);
  }
  /** Answer directly, with no MQTT action. */
  static respond(code: u8, payload: Uint8Array | null = null, contentFormat: i32 = NONE): Route {
    return new Route(abi.hook.ROUTE_RESPOND, null, "", NONE, code, payload ? payload : new Uint8Array(0), contentFormat);
  }
  /** Answer directly with a UTF-8 text body (Content-Format text/plain unless given). */
  static respondText(code: u8, text: string, contentFormat: i32 = 0): Route {
    return Route.respond(code, Uint8Array.wrap(String.UTF8.encode(text)), contentFormat);
  }
  /** Refuse the request with `code` and a diagnostic for the device's owner. */
  static reject(code: u8, reason: string = ""): Route {
    return new Route(abi.hook.ROUTE_REJECT, null, "", NONE, code, null, NONE, reason);
  }
}

/** The verdict of a payload hook (uplink, downlink). */
export class Transform {
  private constructor(
    /** The ABI verdict number (`abi.hook.TRANSFORM_*`). */
    public kind: i32,
    /** Replace: the new payload. */
    public payload: Uint8Array | null = null,
    /** Replace: the new Content-Format, or `NONE` when it does not change. */
    public contentFormat: i32 = NONE,
    /** Reject: the response code. */
    public code: u8 = 0,
    /** Reject: a diagnostic (never a secret). */
    public reason: string = "",
  ) {}

  /** Keep the payload as it is. */
  static continue(): Transform {
    return new Transform(abi.hook.TRANSFORM_CONTINUE);
  }
  /**
   * Replace the payload (and optionally its Content-Format, which becomes the MQTT v5 content
   * type on the way up).
   */
  static replace(payload: Uint8Array, contentFormat: i32 = NONE): Transform {
    return new Transform(abi.hook.TRANSFORM_REPLACE, payload, contentFormat);
  }
  /** Replace the payload with UTF-8 text. */
  static replaceText(text: string, contentFormat: i32 = NONE): Transform {
    return Transform.replace(Uint8Array.wrap(String.UTF8.encode(text)), contentFormat);
  }
  /** Do not deliver (answer 2.04 upward, send no notification downward). */
  static drop(): Transform {
    return new Transform(abi.hook.TRANSFORM_DROP);
  }
  /** Refuse (upward only; downward it counts as drop). */
  static reject(code: u8, reason: string = ""): Transform {
    return new Transform(abi.hook.TRANSFORM_REJECT, null, NONE, code, reason);
  }
}

/**
 * A rule: extend this class and override the hooks you need; the others pass. Export only the
 * hooks you override (see `exports.ts`): a hook that is not exported costs nothing.
 */
export class Rule {
  /** Who is the device? Runs first, for every request. */
  authenticate(req: Request): Auth {
    return Auth.continue();
  }
  /** Which action does the request mean? */
  route(req: Request, who: Principal): Route {
    return Route.continue();
  }
  /** May `who` do `access` on `topic`? */
  authorize(who: Principal, access: Access, topic: string): Authz {
    return Authz.Continue;
  }
  /** What does the payload become on the way up? */
  uplink(msg: Uplink, who: Principal): Transform {
    return Transform.continue();
  }
  /** What does the payload become on the way down to an observer? */
  downlink(msg: Downlink, who: Principal): Transform {
    return Transform.continue();
  }
}

/** What a rule's constructor answers: the rule, or a refusal that names the key and the fix. */
export class Init {
  private constructor(public rule: Rule | null, public reason: string) {}
  /** The config is fine: serve with `rule`. */
  static ok(rule: Rule): Init {
    return new Init(rule, "");
  }
  /** Refuse to load, with a reason that names the key and the fix. */
  static refuse(reason: string): Init {
    return new Init(null, reason);
  }
}

/** A rule's constructor: reads its config and answers `Init.ok(rule)` or `Init.refuse(reason)`. */
export type InitFn = (config: Config) => Init;
