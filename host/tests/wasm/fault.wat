;; A rule that misbehaves on demand: the first byte of the first path segment picks what
;; `sluice_route` does (see host/tests/wasm_runtime.rs).
(module
  (import "sluice1" "get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "sluice1" "set" (func $set (param i32 i32 i32) (result i32)))
  (import "sluice1" "set_i64" (func $set_i64 (param i32 i64) (result i32)))
  (import "sluice1" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 0) "a/+/b")
  (data (i32.const 16) "\ff\fe")
  (data (i32.const 32) "c0")
  (data (i32.const 48) "route called")
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) (i32.const 0))
  (func (export "sluice_route") (result i32)
    (local $c i32)
    ;; no first path segment: continue
    (if (i32.lt_s (call $get (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 16)) (i32.const 1))
      (then (return (i32.const 0))))
    (local.set $c (i32.load8_u (i32.const 1024)))
    (call $log (i32.const 3) (i32.const 48) (i32.const 12))
    ;; t: trap
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    ;; l: loop forever
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $forever (br $forever))))
    ;; m: grow memory by 1 MiB until refused, then trap
    (if (i32.eq (local.get $c) (i32.const 109))
      (then (loop $grow
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
        (br $grow))))
    ;; o: get into a destination outside memory
    (if (i32.eq (local.get $c) (i32.const 111))
      (then (drop (call $get (i32.const 3) (i32.const 0) (i32.const -16) (i32.const 64)))))
    ;; O: set from a source that runs past the end of memory
    (if (i32.eq (local.get $c) (i32.const 79))
      (then (drop (call $set (i32.const 104) (i32.const 131000) (i32.const 1000)))))
    ;; w: publish to a topic with a wildcard
    (if (i32.eq (local.get $c) (i32.const 119))
      (then (drop (call $set (i32.const 104) (i32.const 0) (i32.const 5))) (return (i32.const 1))))
    ;; q: publish with QoS 3 (the refused status is ignored)
    (if (i32.eq (local.get $c) (i32.const 113))
      (then
        (drop (call $set (i32.const 104) (i32.const 32) (i32.const 2)))
        (drop (call $set_i64 (i32.const 105) (i64.const 3)))
        (return (i32.const 1))))
    ;; u: publish to a topic that is not UTF-8
    (if (i32.eq (local.get $c) (i32.const 117))
      (then (drop (call $set (i32.const 104) (i32.const 16) (i32.const 2))) (return (i32.const 1))))
    ;; h: publish to a 70,000-byte topic
    (if (i32.eq (local.get $c) (i32.const 104))
      (then (drop (call $set (i32.const 104) (i32.const 0) (i32.const 70000))) (return (i32.const 1))))
    ;; n: a negative verdict
    (if (i32.eq (local.get $c) (i32.const 110)) (then (return (i32.const -1))))
    ;; x: a verdict ABI v1 does not define
    (if (i32.eq (local.get $c) (i32.const 120)) (then (return (i32.const 99))))
    ;; p: publish without a topic
    (if (i32.eq (local.get $c) (i32.const 112)) (then (return (i32.const 1))))
    ;; g: grow memory by one page, then count
    (if (i32.eq (local.get $c) (i32.const 103)) (then (drop (memory.grow (i32.const 1))) (local.set $c (i32.const 99))))
    ;; c: count the calls of this instance; publish to c1, c2, ...
    (if (i32.eq (local.get $c) (i32.const 99))
      (then
        (global.set $count (i32.add (global.get $count) (i32.const 1)))
        (i32.store8 (i32.const 33) (i32.add (i32.const 48) (global.get $count)))
        (drop (call $set (i32.const 104) (i32.const 32) (i32.const 2)))
        (return (i32.const 1))))
    (i32.const 0))
  ;; uplink: a payload starting with t traps; anything else continues
  (func (export "sluice_uplink") (result i32)
    (if (i32.gt_s (call $get (i32.const 10) (i32.const 0) (i32.const 1024) (i32.const 1)) (i32.const 0))
      (then (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 116)) (then unreachable))))
    (i32.const 0)))
