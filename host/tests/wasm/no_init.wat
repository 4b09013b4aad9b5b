;; Has no sluice_init.
(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_route") (result i32) (i32.const 0)))
