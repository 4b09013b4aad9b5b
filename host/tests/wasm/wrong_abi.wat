;; Built for a future ABI: exports the v2 marker only.
(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v2"))
  (func (export "sluice_init") (result i32) (i32.const 0)))
