// @sluice/sdk: write Sluice gateway rules in AssemblyScript.
//
// A rule decides what the gateway does with a CoAP request: who the device is (`authenticate`),
// which action a URL means (`route`), whether the device may do it (`authorize`) and what the
// payload becomes on the way up (`uplink`) and down (`downlink`). Every hook may answer
// "continue", which passes the decision to the next rule in the chain.
//
// The API mirrors the Rust SDK (`sluice-sdk`) type for type; this package hides ABI v1
// (`./abi.ts`, mirroring `sdk/abi/src/lib.rs`) behind it. A rule's entry file looks like:
//
// ```ts
// import { Config, Init, Principal, Request, Route, Rule, init } from "@sluice/sdk";
// export { sluice_abi_v1, sluice_route } from "@sluice/sdk/exports";
//
// class Hello extends Rule {
//   route(req: Request, who: Principal): Route {
//     if (req.path.length > 1 && req.path[0] == "hello") return Route.publish("hello/" + req.path.slice(1).join("/"));
//     return Route.continue();
//   }
// }
//
// function create(config: Config): Init {
//   return Init.ok(new Hello());
// }
//
// export function sluice_init(): i32 {
//   return init(create);
// }
// ```
//
// See README.md for the guide: building with `sluice rule build`, vectors, limits and fail policies.

export * from "./types";
export * from "./code";
export { Config } from "./config";
export { init } from "./exports";
export { nowMs, configValue } from "./host";
export { JsonKind, JsonValue, Json, MAX_DEPTH } from "./json";
export { validTopic, validFilter, matches, covers } from "./topic";
export { Level, write as logWrite, error as logError, warn as logWarn, info as logInfo, debug as logDebug, sluiceAbort } from "./log";
