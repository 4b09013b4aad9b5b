;; Built for wasm32-wasip1: imports WASI.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0)))
