;; Not a Sluice rule: no ABI marker.
(module
  (memory (export "memory") 1)
  (func (export "sluice_init") (result i32) (i32.const 0))
  (func (export "sluice_route") (result i32) (i32.const 0)))
