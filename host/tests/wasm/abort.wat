;; An AssemblyScript-style module whose init calls env.abort with a message (UTF-16, length
;; at ptr - 4), as AssemblyScript's `abort` does.
(module
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (import "env" "seed" (func $seed (result f64)))
  (import "env" "Date.now" (func $now (result f64)))
  (import "env" "trace" (func $trace (param i32 i32 f64 f64 f64 f64 f64)))
  (memory (export "memory") 1)
  ;; "boom" at 20, its byte length 8 at 16; "a.ts" at 36, length at 32
  (data (i32.const 16) "\08\00\00\00b\00o\00o\00m\00")
  (data (i32.const 32) "\08\00\00\00a\00.\00t\00s\00")
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32)
    (call $trace (i32.const 20) (i32.const 1) (call $seed) (f64.const 0) (f64.const 0) (f64.const 0) (f64.const 0))
    (if (f64.lt (call $now) (f64.const 1e12)) (then (return (i32.const 1))))
    (call $abort (i32.const 20) (i32.const 36) (i32.const 7) (i32.const 3))
    (i32.const 0)))
