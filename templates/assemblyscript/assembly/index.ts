// {{name}}: a Sluice rule in AssemblyScript.
//
// route: a request whose first path segment is `hello` is published to `hello/{rest of the path}`
// (QoS from the gateway's default, retain false); anything else passes to the next rule.
//
// Build: `sluice rule build .` (or `npm run asbuild` for the bare module, build/rule.raw.wasm).

import { Config, Init, Principal, Request, Route, Rule, init } from "@sluice/sdk";

// The ABI marker and the hooks this rule implements (export only those you override).
export { sluice_abi_v1, sluice_route } from "@sluice/sdk/exports";

class Hello extends Rule {
  route(req: Request, who: Principal): Route {
    if (req.path.length > 1 && req.path[0] == "hello") {
      return Route.publish("hello/" + req.path.slice(1).join("/"));
    }
    return Route.continue();
  }
}

/** The rule's constructor: reads the config (none yet) or refuses with a reason. */
function create(config: Config): Init {
  return Init.ok(new Hello());
}

export function sluice_init(): i32 {
  return init(create);
}
