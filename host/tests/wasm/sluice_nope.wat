;; Imports a function ABI v1 does not define.
(module
  (import "sluice1" "nope" (func (result i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0)))
