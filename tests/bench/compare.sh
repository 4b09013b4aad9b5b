#!/usr/bin/env bash
# One run of the side-by-side benchmarks of DESIGN §8, written to BENCHMARKS.md:
#
#   bash tests/bench/compare.sh [--runs N] [--short] [--quick] [--out FILE]
#
# It builds Sluice and sluice-bench in release mode and every Wasm rule, installs the peer
# gateways with the team's scripts (../shared/peers, or $SLUICE_PEERS), then, RUNS times (3 by
# default, for medians): the machine's raw UDP ceiling (a bare sink) and the floor of CPU per
# answered message (the sink answering CON at 20k msg/s), and for each target —
# Sluice with builtin:emqx, Sluice with emqx.wasm, Sluice with an AssemblyScript rule
# (examples/enrich-as), Eclipse Ponte, Node-RED — started fresh on the same mosquitto, the same
# scenarios with the same generator; and DTLS PSK handshakes per second for Sluice with
# builtin:emqx (the peers have no DTLS). Raw results go to target/bench/results.jsonl (one JSON
# object per scenario and run); tests/bench/compare.py turns them into the tables. Every run that
# counts over MQTT also reads mosquitto's CPU time (--broker-pid) and the machine's busy share of
# its cores, so that the tables show where the CPU goes.
#
# --short: short steps (2 s rate steps, 3 s loads, 1k observers, 10k idle devices, 10 swaps,
#          3 s of handshakes).
# --quick: --short with one run (a smoke test of the whole pipeline, not for publishing).
# Loopback only; every step is bounded in time. Needs: mosquitto, node + npm, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

RUNS=3
QUICK=0
SHORT=0
OUT=BENCHMARKS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --quick) QUICK=1; SHORT=1; RUNS=1; shift ;;
    --short) SHORT=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: compare.sh [--runs N] [--short] [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
done

# Path templates hold `?` and `{}`: no globbing anywhere below.
set -f
PEERS=${SLUICE_PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
WORK=$ROOT/target/bench
RESULTS=$WORK/results.jsonl
MQTT_PORT=21883
COAP_PORT=25683
DTLS_PORT=25684
SINK_PORT=25999
export PATH="$PATH:/usr/sbin"

if [ "$SHORT" = 1 ]; then
  STEP=2s; DURATION=3s; OBSERVERS=1000; FANOUT_MESSAGES=20; IDLE=10000; SWAPS=10
else
  STEP=5s; DURATION=10s; OBSERVERS=10000; FANOUT_MESSAGES=100; IDLE=100000; SWAPS=100
fi

for tool in mosquitto node npm python3; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is missing (apt-get install mosquitto nodejs npm python3)" >&2; exit 1; }
done
[ -d "$PEERS" ] || { echo "compare.sh: no peer scripts at $PEERS; set SLUICE_PEERS to the shared/peers folder" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== Building (release) and the rules"
cargo build -q --release -p sluice -p sluice-bench
bash scripts/build-rules.sh >/dev/null
SLUICE=$ROOT/target/release/sluice
BENCH=$ROOT/target/release/sluice-bench

echo "== Peers"
mkdir -p "$WORK/peers"
bash "$PEERS/ponte/setup.sh" "$WORK/peers/ponte" >/dev/null
NR_TOPICS="bench" bash "$PEERS/node-red/setup.sh" "$WORK/peers/node-red" >/dev/null

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

wait_udp() { # PORT: until something is bound to it (15 s)
  for _ in $(seq 150); do
    if ss -uln "( sport = :$1 )" | grep -q ":$1"; then return 0; fi
    sleep 0.1
  done
  echo "compare.sh: nothing listens on UDP $1" >&2; return 1
}

MOSQ_PID=
start_mosquitto() {
  mosquitto -c tests/bench/mosquitto.conf >"$WORK/mosquitto.log" 2>&1 &
  MOSQ_PID=$!
  PIDS+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$MQTT_PORT) 2>/dev/null && return 0; sleep 0.1; done
  echo "compare.sh: mosquitto did not start" >&2; return 1
}

# `--broker-pid` of the running mosquitto (nothing, with a warning, if it has exited: the run then
# measures what it can instead of failing on the pid).
broker_pid() {
  if kill -0 "$MOSQ_PID" 2>/dev/null; then echo "--broker-pid $MOSQ_PID"; else echo "   (mosquitto, pid $MOSQ_PID, has exited)" >&2; fi
}

# Gateway configs: the same listener and broker, three rule chains.
mkdir -p "$WORK/configs" "$WORK/rules"
# Every Sluice also serves DTLS with the PSK of tests/bench/bench-psk.txt (identity bench).
base="coap:\n  bind: 127.0.0.1:$COAP_PORT\ndtls:\n  bind: 127.0.0.1:$DTLS_PORT\n  psk_file: $ROOT/tests/bench/bench-psk.txt\nmqtt:\n  broker: mqtt://127.0.0.1:$MQTT_PORT\n"
printf "${base}rules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" >"$WORK/configs/builtin.yaml"
# The same as builtin, with NON notifications (fan-out) and room for a million observers (idle-1m).
printf "coap:\n  bind: 127.0.0.1:$COAP_PORT\n  notify_type: non\n  max_observers: 1000000\nmqtt:\n  broker: mqtt://127.0.0.1:$MQTT_PORT\nrules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" >"$WORK/configs/builtin-non.yaml"
printf "coap:\n  bind: 127.0.0.1:$COAP_PORT\n  max_observers: 1000000\nmqtt:\n  broker: mqtt://127.0.0.1:$MQTT_PORT\nrules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" >"$WORK/configs/builtin-1m.yaml"
# builtin with two UDP drivers sharing the port (SO_REUSEPORT, coap.drivers).
printf "${base}rules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" | sed "s/^  bind: 127.0.0.1:$COAP_PORT\$/&\\n  drivers: 2/" >"$WORK/configs/drivers2.yaml"
printf "${base}rules:\n  - rule: $ROOT/target/rules/emqx.wasm\n    config: {anonymous: true}\n" >"$WORK/configs/wasm.yaml"
printf "${base}rules:\n  - rule: $ROOT/target/rules/enrich-as.wasm\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" >"$WORK/configs/as.yaml"

start_target() { # NAME [CONFIG]
  case "$1" in
    sluice-builtin|sluice-2drivers|sluice-emqx-wasm|sluice-as)
      local config=${2:-builtin}
      [ "$1" = sluice-2drivers ] && config=drivers2
      [ "$1" = sluice-emqx-wasm ] && config=wasm
      [ "$1" = sluice-as ] && config=as
      rm -rf "$WORK/rules"; mkdir -p "$WORK/rules"
      "$SLUICE" run --config "$WORK/configs/$config.yaml" --rules-dir "$WORK/rules" >"$WORK/$1.log" 2>&1 &
      ;;
    ponte) PONTE_LOG_LEVEL=50 bash "$PEERS/ponte/run.sh" "$WORK/peers/ponte" "$COAP_PORT" "$MQTT_PORT" >"$WORK/ponte.log" 2>&1 & ;;
    node-red) bash "$PEERS/node-red/run.sh" "$WORK/peers/node-red" "$COAP_PORT" "$MQTT_PORT" >"$WORK/node-red.log" 2>&1 & ;;
  esac
  PIDS+=($!)
  wait_udp "$COAP_PORT"
  sleep 1
}

# The URL each target publishes `bench/…` (or, for the AS rule, `devices/…`) through.
template() {
  case "$1" in
    sluice-builtin|sluice-2drivers|sluice-emqx-wasm) echo "--path-template /mqtt/bench/{device}?c=d{device} --topic-filter bench/#" ;;
    sluice-as) echo "--path-template /t/bench/{device}?c=d{device} --topic-filter devices/#" ;;
    ponte) echo "--path-template /r/bench/{device} --topic-filter bench/#" ;;
    node-red) echo "--path-template /ps/bench --topic-filter bench" ;;
  esac
}

record() { # RUN TARGET SCENARIO -- command…: appends the report's JSON lines, tagged
  local run=$1 target=$2 scenario=$3; shift 4
  echo "-- run $run · $target · $scenario"
  local out
  if out=$(timeout 600 "$@" --json 2>"$WORK/last.err"); then :; else
    echo "   (failed: $(tail -1 "$WORK/last.err"))"
  fi
  printf '%s\n' "$out" | while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '{"run":%s,"target":"%s","scenario":"%s","report":%s}\n' "$run" "$target" "$scenario" "$line" >>"$RESULTS"
  done
}

: >"$RESULTS"
T="--target 127.0.0.1:$COAP_PORT --gateway-pid auto"
M="--mqtt mqtt://127.0.0.1:$MQTT_PORT"
for run in $(seq "$RUNS"); do
  echo "== Run $run of $RUNS"
  # The physical ceiling: the same generator against a bare UDP sink.
  "$BENCH" sink --bind 127.0.0.1:$SINK_PORT --recv-buffer 4194304 --duration 600s >/dev/null 2>&1 &
  SINK_PID=$!
  PIDS+=($!)
  wait_udp $SINK_PORT
  S="--sink --target 127.0.0.1:$SINK_PORT --gateway-pid $SINK_PID"
  record "$run" udp-sink find-rate -- "$BENCH" find-rate $S --start 50000 --step "$STEP"
  record "$run" udp-sink con-64 -- "$BENCH" put $S --con --window 64 --rate 0 --duration "$DURATION"
  # The floor of "receive one datagram and answer it": the sink's own CPU per answered CON at
  # 20k msg/s (reported as gateway_cpu_us_per_msg, the sink standing in for the gateway).
  record "$run" udp-sink floor-20k -- "$BENCH" put $S --con --window 64 --rate 20000 --duration "$DURATION"
  stop_all

  for target in sluice-builtin sluice-2drivers sluice-emqx-wasm sluice-as ponte node-red; do
    start_mosquitto
    start_target "$target"
    # shellcheck disable=SC2046
    set -- $(template "$target")
    record "$run" "$target" find-rate -- "$BENCH" find-rate $T $M $(broker_pid) "$@" --devices 1000 --start 2000 --step "$STEP"
    record "$run" "$target" non-4k -- "$BENCH" put $T $M $(broker_pid) "$@" --devices 1000 --rate 4000 --duration "$DURATION"
    case "$target" in sluice-*)
      record "$run" "$target" non-20k -- "$BENCH" put $T $M $(broker_pid) "$@" --devices 1000 --rate 20000 --duration "$DURATION" ;;
    esac
    record "$run" "$target" con-64 -- "$BENCH" put $T $M $(broker_pid) "$@" --devices 1000 --con --window 64 --rate 0 --duration "$DURATION"
    if [ "$target" = sluice-builtin ]; then
      record "$run" "$target" fanout -- "$BENCH" fanout $T $M $(broker_pid) --observers "$OBSERVERS" --messages "$FANOUT_MESSAGES"
      record "$run" "$target" swaps -- "$BENCH" swaps $T $M $(broker_pid) --rules-dir "$WORK/rules" \
        --package "$ROOT/target/rules/fault.wasm" --package "$ROOT/target/rules/fault-as.wasm" --swaps "$SWAPS" \
        --rate 50000 --window 256 --duration 20s --path-template '/ok/{device}?c=d{device}' --topic-filter 'ok/#'
      # DTLS PSK handshakes (identity and key: the defaults, as in bench-psk.txt).
      record "$run" "$target" handshakes -- "$BENCH" handshakes --target 127.0.0.1:$DTLS_PORT --gateway-pid auto \
        --duration "$DURATION"
      stop_all
      # Memory per idle device on a freshly started gateway.
      start_mosquitto
      start_target "$target"
      record "$run" "$target" idle -- "$BENCH" idle $T --devices "$IDLE"
      stop_all
      # Fan-out again with NON notifications (RFC 7641 §4.5: every 100th one CON).
      start_mosquitto
      start_target "$target" builtin-non
      record "$run" "$target" fanout-non -- "$BENCH" fanout $T $M $(broker_pid) --observers "$OBSERVERS" --messages "$FANOUT_MESSAGES"
      if [ "$run" = 1 ] && [ "$QUICK" = 0 ]; then
        stop_all
        # A million idle observers, once (about a minute and 1.5 GiB).
        start_mosquitto
        start_target "$target" builtin-1m
        record "$run" "$target" idle-1m -- "$BENCH" idle $T --devices 1000000
      fi
    fi
    stop_all
  done
done

echo "== One rule call per hook (sluice rule bench)"
{
  "$SLUICE" rule bench builtin:emqx --vectors rules/emqx/rule.yaml
  "$SLUICE" rule bench target/rules/emqx.wasm
  "$SLUICE" rule bench target/rules/thingsboard.wasm
  "$SLUICE" rule bench target/rules/enrich-as.wasm
} >"$WORK/rule-calls.txt" 2>&1 || echo "   (rule bench failed: see $WORK/rule-calls.txt)"

echo "== Writing $OUT"
python3 tests/bench/compare.py "$RESULTS" "$OUT" --runs "$RUNS" $([ "$QUICK" = 1 ] && echo --quick) $([ "$SHORT" = 1 ] && echo --short)
echo "Done: $OUT (raw: $RESULTS)"
