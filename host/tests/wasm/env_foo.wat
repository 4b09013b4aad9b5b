;; Imports a host function outside the allowlist.
(module
  (import "env" "foo" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0)))
