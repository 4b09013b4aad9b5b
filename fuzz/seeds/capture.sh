#!/usr/bin/env bash
# Records the datagrams libcoap's coap-client-notls exchanges with a real gateway while it runs
# the EMQX-style commands of the README, and writes them as seed corpora under fuzz/corpus/.
#
#   bash fuzz/seeds/capture.sh            (needs coap-client-notls, mosquitto, python3, and
#                                          a built gateway: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
SLUICE=${SLUICE:-target/release/sluice}
[ -x "$SLUICE" ] || { echo "no gateway binary at $SLUICE; run cargo build --release or set SLUICE" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
MQTT=$(port SOCK_STREAM); GW=$(port SOCK_DGRAM); PROXY=$(port SOCK_DGRAM)
/usr/sbin/mosquitto -p "$MQTT" >"$work/mosquitto.log" 2>&1 & pids+=($!)
sleep 0.5
"$SLUICE" run --coap-bind "127.0.0.1:$GW" --mqtt "mqtt://127.0.0.1:$MQTT" --admin-bind none >"$work/sluice.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do grep -q "ready\|listening\|Serving" "$work/sluice.log" 2>/dev/null && break; sleep 0.2; done
sleep 1
mkdir -p "$work/logs"

# One proxy per scenario, so that each scenario is one seed of the endpoint corpus.
scenario() {
    local name=$1; shift
    python3 fuzz/seeds/proxy.py "$PROXY" "$GW" "$work/logs/$name" & local proxy=$!
    sleep 0.3
    "$@" >/dev/null 2>&1 || true
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
}
U="coap://127.0.0.1:$PROXY"
C=coap-client-notls
head -c 200 /dev/zero | tr '\0' 'x' >"$work/payload200"

scenario put_publish      $C -m put -e hello "$U/mqtt/a/b?c=c1&u=tom&p=secret"
scenario put_non          $C -N -m put -e hello "$U/mqtt/a/b?c=c1&u=tom&p=secret"
scenario post_mqtt        $C -m post -e hello "$U/mqtt/a/b?c=c1&u=tom&p=secret"
scenario keepalive        $C -m get "$U/mqtt/a/b?c=c1&u=tom&p=secret"
scenario ps_put           $C -m put -e '#{msg => "Hello, CoAP"}' -t json "$U/ps/coap/test?c=c1&u=tom&p=secret"
scenario ps_get           $C -m get "$U/ps/coap/test?c=c1&u=tom&p=secret"
scenario ps_delete        $C -m delete "$U/ps/coap/test?c=c1&u=tom&p=secret"
scenario ps_get_missing   $C -m get "$U/ps/coap/test?c=c1&u=tom&p=secret"
scenario block1_put       $C -m put -b 16 -f "$work/payload200" "$U/ps/big?c=c1&u=tom&p=secret"
scenario block2_get       $C -m get -b 16 "$U/ps/big?c=c1&u=tom&p=secret"
scenario conn_post        $C -m post "$U/mqtt/connection?clientid=dev1&username=tom&password=secret"
TOKEN=$($C -m post "coap://127.0.0.1:$GW/mqtt/connection?clientid=dev2&username=tom&password=secret" 2>/dev/null | tail -1)
scenario conn_publish     $C -m put -e 21.5 "$U/mqtt/devices/dev2/temp?clientid=dev2&token=$TOKEN"
scenario conn_heartbeat   $C -m put "$U/mqtt/connection?clientid=dev2&token=$TOKEN"
scenario conn_delete      $C -m delete "$U/mqtt/connection?clientid=dev2&token=$TOKEN"
# Observe: the client registers, a message is published while it listens, then it cancels.
( sleep 1.5; mosquitto_pub -p "$MQTT" -t coap/observe -m 'Hello, observer' ) & pub1=$!
scenario observe_mqtt     $C -m get -s 3 -B 4 "$U/mqtt/coap/observe?c=c2&u=tom&p=secret"
( sleep 1.5; mosquitto_pub -p "$MQTT" -t coap/test -m 'value' ) & pub2=$!
scenario observe_ps       $C -m get -s 3 -B 4 "$U/ps/coap/test?c=c3&u=tom&p=secret"
wait "$pub1" "$pub2"

python3 fuzz/seeds/make_corpus.py "$work/logs" fuzz/corpus
echo "datagrams: $(ls fuzz/corpus/coap_message | wc -l) seeds in fuzz/corpus/coap_message," \
    "$(ls fuzz/corpus/endpoint | wc -l) conversations in fuzz/corpus/endpoint"
