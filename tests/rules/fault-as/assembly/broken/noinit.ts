// A build the gateway must refuse: the ABI marker and a hook, but no `sluice_init` export (the
// one-line `export function sluice_init()` of every rule was forgotten).
export { sluice_abi_v1, sluice_route } from "@sluice/sdk/exports";
