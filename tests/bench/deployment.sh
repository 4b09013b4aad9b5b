#!/usr/bin/env bash
# One gateway against three on the same machine and the same mosquitto (issue 14's BENCHMARKS.md
# row): `sluice-bench put --target A,B,C` spreads the devices over the gateways and reports the
# aggregate. On a 2-core machine three gateways share the cores one gateway already uses, so
# this shows that a deployment loses nothing and what the extra processes cost, not speed-up.
#
#   bash tests/bench/deployment.sh [--runs N] [--duration D]
#
# Prints a Markdown table of medians (and writes every run to target/bench/deployment.jsonl).
# Needs mosquitto; builds the release binaries when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUNS=3
DURATION=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "usage: deployment.sh [--runs N] [--duration D]" >&2; exit 2 ;;
  esac
done
set -f
export PATH="$PATH:/usr/sbin"
WORK=$ROOT/target/bench/deployment
RESULTS=$ROOT/target/bench/deployment.jsonl
MQTT_PORT=21893
SLUICE=$ROOT/target/release/sluice
BENCH=$ROOT/target/release/sluice-bench
[ -x "$SLUICE" ] && [ -x "$BENCH" ] || cargo build -q --release -p sluice -p sluice-bench
command -v mosquitto >/dev/null || { echo "deployment.sh: mosquitto is missing (apt-get install mosquitto)" >&2; exit 1; }
rm -rf "$WORK"; mkdir -p "$WORK"; : >"$RESULTS"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
pids+=($!)
sleep 0.5

# Gateways: each its own CoAP port, the same broker and rule.
start_gateways() {
  local n=$1 i targets=""
  gateway_pids=()
  for i in $(seq "$n"); do
    local port=$((25790 + i))
    cat >"$WORK/gateway$i.yaml" <<YAML
coap:
  bind: 127.0.0.1:$port
mqtt:
  broker: mqtt://127.0.0.1:$MQTT_PORT
  client_id: bench-gateway$i
rules:
  - rule: builtin:emqx
    config: {anonymous: true}
YAML
    RUST_LOG=sluice=warn "$SLUICE" run --config "$WORK/gateway$i.yaml" >"$WORK/gateway$i.log" 2>&1 &
    gateway_pids+=($!)
    targets="$targets,127.0.0.1:$port"
  done
  TARGETS=${targets#,}
  sleep 1
}
stop_gateways() {
  for p in "${gateway_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

bench() { # name, gateways, sluice-bench put arguments...
  local name=$1 n=$2; shift 2
  "$BENCH" put --target "$TARGETS" --mqtt "mqtt://127.0.0.1:$MQTT_PORT" --gateway-pid auto --broker-pid auto \
    --devices 1000 --duration "$DURATION" --json "$@" |
    python3 -c "import json,sys; r=json.load(sys.stdin); r['name']='$name'; r['n']=$n; print(json.dumps(r))" >>"$RESULTS"
}

for run in $(seq "$RUNS"); do
  for n in 1 3; do
    echo "run $run/$RUNS: $n gateway(s)" >&2
    start_gateways "$n"
    bench "CON, window 64, closed loop" "$n" --con --rate 0 --window 64
    bench "NON at 20,000/s" "$n" --rate 20000
    stop_gateways
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(rs, key):
    vals = [r.get(key) for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None
print("| scenario | gateways | answered or delivered per s | lost | gateways' CPU µs/msg | broker CPU µs/msg | p99 RTT (ms) |")
print("|---|---|---|---|---|---|---|")
for name in dict.fromkeys(r["name"] for r in rows):
    for n in (1, 3):
        rs = [r for r in rows if r["name"] == name and r["n"] == n]
        if not rs:
            continue
        rate = med(rs, "acks_per_s") if rs[0].get("mode") == "CON" else med(rs, "rate_delivered")
        lost = sum(r.get("lost", 0) for r in rs)
        p99 = med([{"v": (r.get("rtt") or {}).get("p99_us")} for r in rs], "v")
        fmt = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
        print(f"| {name} | {n} | {fmt(rate)} | {lost} | {fmt(med(rs, 'gateway_cpu_us_per_msg'), 1)} | {fmt(med(rs, 'broker_cpu_us_per_msg'), 1)} | {fmt(None if p99 is None else p99 / 1000, 2)} |")
print(f"\n{len(rows)} runs; medians of {max(1, len(rows) // 4)} per row; `lost` is summed over the runs.")
PY
