// The module's exports. A rule's entry file re-exports the marker and the hooks it implements,
// and writes `sluice_init` itself (so that the constructor is a plain function call, with no
// start function in the module):
//
// ```ts
// export { sluice_abi_v1, sluice_route, sluice_uplink } from "@sluice/sdk/exports";
// export function sluice_init(): i32 { return init(create); }
// ```
//
// Each hook fetches its inputs in one crossing (`host.loadInputs`), reads them into the SDK's types, calls the rule's method, and writes the
// verdict back. A hook that runs before `sluice_init` accepted a config answers -1, so the host
// applies the fail policy.

import * as abi from "./abi";
import * as host from "./host";
import * as log from "./log";
import { Access, InitFn, Rule } from "./types";

/** The rule instance `sluice_init` built (one per Wasm instance). */
let RULE: Rule | null = null;

/** The ABI v1 marker: never called; its presence tells the host which ABI the module speaks. */
export function sluice_abi_v1(): void {}

/**
 * Runs the rule's constructor on the config the host offers and keeps the rule for the hooks. A
 * refusal writes its reason to `OUT_REASON` and answers 1 (or the host's negative status).
 */
export function init(create: InitFn): i32 {
  const config = host.config();
  const result = create(config);
  const rule = result.rule;
  if (rule != null) {
    RULE = rule;
    return 0;
  }
  RULE = null;
  const reason = String.UTF8.encode(result.reason.length > 0 ? result.reason : "the rule refused its config");
  const status = abi.set(abi.field.OUT_REASON, changetype<usize>(reason), reason.byteLength);
  return status < 0 ? status : 1;
}

function rule(): Rule | null {
  const r = RULE;
  if (r == null) log.error("a hook ran before sluice_init accepted a config");
  return r;
}

/** `sluice_authenticate`: reads the request, returns the written verdict. */
export function sluice_authenticate(): i32 {
  const r = rule();
  if (r == null) return -1;
  host.loadInputs();
  const req = host.request();
  host.releaseInputs();
  return host.writeAuth(r.authenticate(req));
}

/** `sluice_route`: reads the request and the principal, returns the written verdict. */
export function sluice_route(): i32 {
  const r = rule();
  if (r == null) return -1;
  host.loadInputs();
  const req = host.request();
  const who = host.principal();
  host.releaseInputs();
  return host.writeRoute(r.route(req, who));
}

/** `sluice_authorize`: an access other than 0 or 1 is the host's error: -1, the fail policy denies. */
export function sluice_authorize(): i32 {
  const r = rule();
  if (r == null) return -1;
  host.loadInputs();
  const access = host.int(abi.field.ACCESS);
  const topic = host.text(abi.field.TOPIC, 0);
  const who = host.principal();
  host.releaseInputs();
  if (access != 0 && access != 1) return -1;
  return <i32>r.authorize(who, <Access>(<i32>access), topic == null ? "" : topic);
}

/** `sluice_uplink`: reads the message and the principal, returns the written verdict. */
export function sluice_uplink(): i32 {
  const r = rule();
  if (r == null) return -1;
  host.loadInputs();
  const msg = host.uplink();
  const who = host.principal();
  host.releaseInputs();
  return host.writeTransform(r.uplink(msg, who));
}

/** `sluice_downlink`: reads the message and the principal, returns the written verdict. */
export function sluice_downlink(): i32 {
  const r = rule();
  if (r == null) return -1;
  host.loadInputs();
  const msg = host.downlink();
  const who = host.principal();
  host.releaseInputs();
  return host.writeTransform(r.downlink(msg, who));
}
