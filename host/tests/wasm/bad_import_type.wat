;; Imports sluice1.get with the wrong type.
(module
  (import "sluice1" "get" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0)))
