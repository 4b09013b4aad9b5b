#!/usr/bin/env bash
# The soak run of RELIABILITY.md: Debian's mosquitto and the gateway (release build), each on
# ephemeral loopback ports, and `sluice-bench soak` against them for a bounded time — NON and
# CON publishes, observers of a /mqtt/ and a /ps/ topic, PubSub reads and writes, DTLS PSK
# sessions — with the gateway's RSS and open fds sampled. It prints the samples as they come,
# then the report, and exits non-zero if anything was lost or the gateway grew after warm-up.
#
#   bash scripts/soak.sh [--duration 10m] [--interval 10s] [--json] [-- MORE sluice-bench soak OPTIONS]
#
# The gateway's de-duplication cache is bounded to 20 000 entries here (coap.max_dedup_entries)
# so that it is full long before the warm-up ends (the mix sends ~1 000 requests/s and each
# entry lives ~247 s): its filling is legitimate growth, and the check after warm-up must not
# count it. Everything else the mix touches is fixed in size (devices, topics, observers) or
# closed again (DTLS sessions).
# Needs: mosquitto (/usr/sbin/mosquitto), python3 (to pick free ports), ss.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10m
INTERVAL=10s
JSON=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --json) JSON=(--json); shift ;;
    --) shift; break ;;
    *) echo "usage: soak.sh [--duration 10m] [--interval 10s] [--json] [-- sluice-bench soak options]" >&2; exit 2 ;;
  esac
done

export PATH="$PATH:/usr/sbin"
for tool in mosquitto python3 ss; do
  command -v "$tool" >/dev/null || { echo "soak.sh: $tool is missing (apt-get install mosquitto python3 iproute2)" >&2; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== Building (release)"
cargo build -q --release -p sluice -p sluice-bench
SLUICE=$ROOT/target/release/sluice
BENCH=$ROOT/target/release/sluice-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-soak.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Free ports from the kernel's ephemeral range: TCP for the broker and the admin API, UDP for
# CoAP and CoAP over DTLS.
read -r MQTT_PORT ADMIN_PORT COAP_PORT DTLS_PORT < <(python3 - <<'EOF'
import socket
held, ports = [], []
for kind in (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    held.append(s)
    ports.append(str(s.getsockname()[1]))
print(" ".join(ports))
EOF
)

cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
EOF
# A soak key, not a secret: the identity and key sluice-bench is given below.
echo "soak:soak-psk-key" >"$WORK/psk.txt"
cat >"$WORK/gateway.yaml" <<EOF
coap:
  bind: 127.0.0.1:$COAP_PORT
  max_dedup_entries: 20000
dtls:
  bind: 127.0.0.1:$DTLS_PORT
  psk_file: $WORK/psk.txt
mqtt:
  broker: mqtt://127.0.0.1:$MQTT_PORT
admin:
  bind: 127.0.0.1:$ADMIN_PORT
rules:
  - rule: builtin:emqx
    config: {anonymous: true}
EOF

echo "== mosquitto on 127.0.0.1:$MQTT_PORT"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break; sleep 0.1; done

echo "== sluice (release): CoAP 127.0.0.1:$COAP_PORT, DTLS 127.0.0.1:$DTLS_PORT, admin 127.0.0.1:$ADMIN_PORT"
"$SLUICE" run --config "$WORK/gateway.yaml" >"$WORK/sluice.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
for _ in $(seq 150); do
  if ss -uln "( sport = :$DTLS_PORT )" | grep -q ":$DTLS_PORT" && ss -uln "( sport = :$COAP_PORT )" | grep -q ":$COAP_PORT"; then break; fi
  kill -0 "$GW_PID" 2>/dev/null || { echo "soak.sh: the gateway exited:" >&2; cat "$WORK/sluice.log" >&2; exit 1; }
  sleep 0.1
done

echo "== sluice-bench soak for $DURATION (samples every $INTERVAL)"
status=0
"$BENCH" soak --target "127.0.0.1:$COAP_PORT" --dtls-target "127.0.0.1:$DTLS_PORT" --identity soak --key soak-psk-key \
  --mqtt "mqtt://127.0.0.1:$MQTT_PORT" --gateway-pid "$GW_PID" --duration "$DURATION" --interval "$INTERVAL" \
  "${JSON[@]}" "$@" || status=$?

echo "== The gateway's counters at the end (admin /metrics)"
python3 - "$ADMIN_PORT" <<'EOF' || true
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
# Every drop, limit and failure counter that is not 0, and the gauges that must be back to 0.
for line in text.splitlines():
    if not line or line.startswith("#"):
        continue
    name, _, value = line.rpartition(" ")
    counter = any(k in name for k in ("drops_total", "echo", "limited", "failures", "errors", "handshakes_total"))
    gauge = name in ("sluice_observers", "sluice_dtls_sessions")
    if gauge or (counter and value not in ("0", "0.0")):
        print("  " + line)
EOF
if kill -0 "$GW_PID" 2>/dev/null; then echo "== The gateway is still serving (pid $GW_PID)"; else echo "soak.sh: the gateway died during the soak" >&2; status=1; fi
[ "$status" = 0 ] && echo "== Soak passed" || echo "== Soak FAILED (exit $status)" >&2
exit "$status"
