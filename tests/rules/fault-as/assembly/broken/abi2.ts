// A build the gateway must refuse: it says it speaks ABI v2 (a rule built against a newer SDK).
// The SDK is linked (as in any rule) for its abort handler, but its v1 marker is not exported.
import "@sluice/sdk";

export function sluice_abi_v2(): void {}

export function sluice_init(): i32 {
  return 0;
}

export function sluice_route(): i32 {
  return 0;
}
