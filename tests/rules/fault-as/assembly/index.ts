// fault-as: a misbehaving rule for the host's containment tests (the AssemblyScript twin of
// tests/rules/fault). route picks a behaviour by the FIRST path segment:
//
//   ok       → publish to `ok/{second segment}`
//   trap     → traps (`unreachable`)
//   loop     → loops forever (the host's deadline must stop it)
//   memory   → allocates 1 MiB chunks forever (the host's memory cap must stop it)
//   oob      → calls the raw `sluice1.get` with dst 0xFFFF_FFF0 and cap 64 (out of bounds)
//   bigout   → publishes to a 1 MiB topic (the host must refuse the output)
//   badtopic → publishes to `a/+/b` (a wildcard in a publish: the host must refuse it)
//   other    → continue
//
// uplink: the payload `trap` traps; anything else continues.

import { Config, Init, Principal, Request, Route, Rule, Transform, Uplink, init } from "@sluice/sdk";
import * as abi from "@sluice/sdk/assembly/abi";

export { sluice_abi_v1, sluice_route, sluice_uplink } from "@sluice/sdk/exports";

/** Keeps the memory bomb's chunks reachable, so the collector cannot free them. */
const hoard: Uint8Array[] = [];
/** Written by the loop, so the optimiser cannot remove it. */
let spins: i64 = 0;

class Fault extends Rule {
  route(req: Request, who: Principal): Route {
    if (req.path.length == 0) return Route.continue();
    const what = req.path[0];
    if (what == "ok") return Route.publish("ok/" + (req.path.length > 1 ? req.path[1] : ""));
    if (what == "trap") unreachable();
    if (what == "loop") {
      while (spins >= 0) spins++;
      return Route.continue();
    }
    if (what == "memory") {
      while (true) {
        const chunk = new Uint8Array(1 << 20);
        chunk[0] = 1; // touch it
        hoard.push(chunk);
      }
    }
    if (what == "oob") {
      const n = abi.get(abi.field.PATH_SEGMENT, 0, 0xfffffff0, 64);
      return Route.publish("oob/" + n.toString());
    }
    if (what == "bigout") return Route.publish("x".repeat(1 << 20));
    if (what == "badtopic") return Route.publish("a/+/b");
    return Route.continue();
  }

  uplink(msg: Uplink, who: Principal): Transform {
    if (msg.payload.length == 4 && String.UTF8.decode(msg.payload.buffer) == "trap") unreachable();
    return Transform.continue();
  }
}

function create(config: Config): Init {
  return Init.ok(new Fault());
}

export function sluice_init(): i32 {
  return init(create);
}
