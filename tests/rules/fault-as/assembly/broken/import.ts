// A build the gateway must refuse: it imports `env.foo`, which is not part of the ABI (a binding
// copied from another host). Built to build/broken-import.raw.wasm, never packaged.
export { sluice_abi_v1 } from "@sluice/sdk/exports";

@external("env", "foo")
declare function foo(): i32;

export function sluice_init(): i32 {
  return 0;
}

export function sluice_route(): i32 {
  return foo();
}
