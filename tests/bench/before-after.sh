#!/usr/bin/env bash
# The same scenarios against two builds of Sluice in one session, alternating, for a ratio that
# the machine's noise cannot fake: the working tree's build ("new") and the build of an older
# commit ("old", e.g. the one before a redesign).
#
#   bash tests/bench/before-after.sh OLD_COMMIT [--runs N] [--scenarios "con-64 non-20k ..."]
#
# Per run and build, on a fresh mosquitto and a fresh gateway (builtin:emqx, anonymous):
#   con-64     CON PUT with 64 outstanding for 5 s: acks/s and the gateway's CPU per message;
#   non-20k    NON PUT at 20k msg/s for 5 s: CPU per message (the per-request cost, logging off:
#              the per-exchange and per-rule-call debug spans exist but are disabled);
#   non-60k    NON PUT at 60k msg/s for 5 s: loss, and the requests refused 5.03 because the
#              publish queue was full (not in the default set);
#   non-max    the highest NON rate with less than 0.1 % loss (find-rate from 20k, 3 s steps;
#              not in the default set);
#   observe-1k 1,000 devices, each on its own topic, register Observe all at once
#              (--concurrency 1000): the time until the last one is registered, which a lock
#              held across each broker round trip stretches to 1,000 round trips;
#   observe-1k-far  the same with the broker 10 ms away (tests/bench/delay-proxy.py, 5 ms each
#              way), as a broker in another zone or region is.
# Medians go to stdout as a Markdown table; the raw reports to target/bench/before-after.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
USAGE='usage: before-after.sh OLD_COMMIT [--runs N] [--scenarios "con-64 non-20k non-60k non-max observe-1k observe-1k-far"]'
OLD=${1:?$USAGE}
shift
RUNS=3
SCENARIOS="con-64 non-20k observe-1k observe-1k-far"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    *) echo "$USAGE" >&2; exit 2 ;;
  esac
done
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
set -f
export PATH="$PATH:/usr/sbin"
WORK=$ROOT/target/bench
RESULTS=$WORK/before-after.jsonl
MQTT_PORT=21883
COAP_PORT=25683
mkdir -p "$WORK"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== Building old ($OLD) and new (the working tree), release"
# The old tree shares target/ (its dependencies are the same builds); its binary is copied
# aside before the new one is built over it.
OLD_BIN=$WORK/sluice-$(git rev-parse --short "$OLD")
if [ ! -x "$OLD_BIN" ]; then
  OLD_TREE=$WORK/old-tree
  rm -rf "$OLD_TREE"
  git worktree prune
  git worktree add -q --detach "$OLD_TREE" "$OLD"
  (cd "$OLD_TREE" && CARGO_TARGET_DIR=$ROOT/target cargo build -q --release -p sluice --bin sluice)
  cp "$ROOT/target/release/sluice" "$OLD_BIN"
  git worktree remove --force "$OLD_TREE"
fi
cargo build -q --release -p sluice -p sluice-bench
cmp -s "$ROOT/target/release/sluice" "$OLD_BIN" && { echo "before-after.sh: old and new binaries are the same" >&2; exit 1; }
NEW=$ROOT/target/release/sluice
BENCH=$ROOT/target/release/sluice-bench

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
wait_udp() {
  for _ in $(seq 150); do
    if ss -uln "( sport = :$1 )" | grep -q ":$1"; then return 0; fi
    sleep 0.1
  done
  echo "before-after.sh: nothing listens on UDP $1" >&2; return 1
}
start() { # BINARY NAME [BROKER_PORT]
  mosquitto -c tests/bench/mosquitto.conf >"$WORK/mosquitto.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$MQTT_PORT) 2>/dev/null && break; sleep 0.1; done
  local broker=${3:-$MQTT_PORT}
  if [ "$broker" != "$MQTT_PORT" ]; then
    python3 tests/bench/delay-proxy.py "$broker" "$MQTT_PORT" 5 &
    PIDS+=($!)
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$broker) 2>/dev/null && break; sleep 0.1; done
  fi
  printf "coap:\n  bind: 127.0.0.1:$COAP_PORT\nadmin:\n  bind: none\nmqtt:\n  broker: mqtt://127.0.0.1:$broker\nrules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n" >"$WORK/before-after.yaml"
  "$1" run --config "$WORK/before-after.yaml" >"$WORK/$2.log" 2>&1 &
  PIDS+=($!)
  wait_udp "$COAP_PORT"
  sleep 1
}
record() { # RUN BUILD SCENARIO -- command…
  local run=$1 build=$2 scenario=$3; shift 4
  echo "-- run $run · $build · $scenario" >&2
  local out
  out=$(timeout 300 "$@" --json 2>"$WORK/last.err") || echo "   (failed: $(tail -1 "$WORK/last.err"))" >&2
  printf '%s\n' "$out" | while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '{"run":%s,"build":"%s","scenario":"%s","report":%s}\n' "$run" "$build" "$scenario" "$line" >>"$RESULTS"
  done
}

: >"$RESULTS"
T="--target 127.0.0.1:$COAP_PORT --gateway-pid auto"
M="--mqtt mqtt://127.0.0.1:$MQTT_PORT"
P="--path-template /mqtt/bench/{device}?c=d{device} --topic-filter bench/#"
for run in $(seq "$RUNS"); do
  for build in old new; do
    binary=$NEW; [ "$build" = old ] && binary=$OLD_BIN
    start "$binary" "$build"
    # shellcheck disable=SC2086
    wants con-64 && record "$run" "$build" con-64 -- "$BENCH" put $T $M $P --devices 1000 --con --window 64 --rate 0 --duration 5s
    # shellcheck disable=SC2086
    wants non-20k && record "$run" "$build" non-20k -- "$BENCH" put $T $M $P --devices 1000 --rate 20000 --duration 5s
    # shellcheck disable=SC2086
    wants non-60k && record "$run" "$build" non-60k -- "$BENCH" put $T $M $P --devices 1000 --rate 60000 --duration 5s
    # shellcheck disable=SC2086
    wants non-max && record "$run" "$build" non-max -- "$BENCH" find-rate $T $M $P --devices 1000 --start 20000 --step 3s
    # shellcheck disable=SC2086
    wants observe-1k && record "$run" "$build" observe-1k -- "$BENCH" idle $T --devices 1000 --concurrency 1000 --settle 0s
    stop_all
    if wants observe-1k-far; then
      start "$binary" "$build" 21884
      # shellcheck disable=SC2086
      record "$run" "$build" observe-1k-far -- "$BENCH" idle $T --devices 1000 --concurrency 1000 --settle 0s
      stop_all
    fi
  done
done

python3 - "$RESULTS" "$OLD" "$(git rev-parse --short HEAD)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(build, scenario, key):
    vals = [r["report"].get(key) for r in rows if r["build"] == build and r["scenario"] == scenario]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None
def num(x):
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
def fmt(v):
    return "–" if v is None else f"{num(v[0])} [{num(v[1])}–{num(v[2])}]"
print(f"| scenario | figure | old ({sys.argv[2][:7]}) | new ({sys.argv[3]}) | new ÷ old |")
print("|---|---|---|---|---|")
for scenario, key, label in [
    ("con-64", "acks_per_s", "acks/s"),
    ("con-64", "gateway_cpu_us_per_msg", "gateway CPU µs/msg"),
    ("non-20k", "gateway_cpu_us_per_msg", "gateway CPU µs/msg"),
    ("non-20k", "loss_pct", "loss %"),
    ("non-60k", "loss_pct", "loss %"),
    ("non-60k", "failed", "refused 5.03 (publish queue full)"),
    ("non-60k", "gateway_cpu_us_per_msg", "gateway CPU µs/msg"),
    ("non-max", "best_rate", "lossless NON msg/s"),
    ("observe-1k", "register_s", "last registration after (s)"),
    ("observe-1k", "registered", "registered"),
    ("observe-1k-far", "register_s", "last registration after (s), broker 10 ms away"),
    ("observe-1k-far", "registered", "registered, broker 10 ms away"),
]:
    o, n = med("old", scenario, key), med("new", scenario, key)
    if o is None and n is None:
        continue
    ratio = f"{n[0] / o[0]:.2f}" if o and n and o[0] else "–"
    print(f"| {scenario} | {label} | {fmt(o)} | {fmt(n)} | {ratio} |")
PY
