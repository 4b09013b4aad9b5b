;; A hook that takes an argument.
(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0))
  (func (export "sluice_route") (param i32) (result i32) (i32.const 0)))
