// `import … from "@sluice/sdk/exports"`: the module's exports (ABI marker and hook functions) a
// rule's entry file re-exports. See ./assembly/exports.ts.
export {
  sluice_abi_v1, sluice_authenticate, sluice_route, sluice_authorize, sluice_uplink, sluice_downlink,
} from "./assembly/exports";
