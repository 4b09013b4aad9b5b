#!/usr/bin/env bash
# A whole scaled-out deployment on one machine, for trying it and for the cluster test:
#   - a 3-node NATS cluster with JetStream and its MQTT interface (MQTT 3.1.1),
#   - one Sluice gateway per NATS node (each connected to its own node, the others listed after
#     it in mqtt.broker, so that it moves to another node when its own goes),
#   - nginx in front, balancing CoAP over UDP by the device's source address and port
#     (`hash $remote_addr$remote_port consistent`), so a device stays on one gateway and a
#     gateway that leaves moves only its own devices. The port is part of the key on purpose: a
#     gateway knows a device by address *and* port (CoAP and DTLS both do), so a device whose
#     NAT changes its port is a new peer to its gateway anyway, while hashing the address alone
#     would put every device behind one NAT (or, here, on loopback) on the same gateway.
#
#   bash scripts/cluster.sh up      [--port 5683] [--gateways 3] [--base 25700] [--broker nats|mosquitto]
#   bash scripts/cluster.sh status
#   bash scripts/cluster.sh kill-gateway N | kill-node N
#   bash scripts/cluster.sh down
#
# Devices use coap://127.0.0.1:PORT (the balancer); MQTT clients any node's MQTT port (printed).
# `--broker mosquitto` runs one mosquitto instead of the NATS cluster, every gateway on it: the
# same scenario on a single broker, for comparison. Everything lives in target/cluster/
# (configs, logs, pids). Environment: SLUICE_CLUSTER_DIR moves that folder, SLUICE_CLUSTER_PORT
# and SLUICE_CLUSTER_BASE change the defaults of --port and --base, SLUICE names the binary.
# Needs: nats-server, nginx and libnginx-mod-stream (Debian packages), mosquitto for
# --broker mosquitto; the release build of sluice (built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/sbin"

CMD=${1:-}
[ $# -gt 0 ] && shift
PORT=${SLUICE_CLUSTER_PORT:-5683}
GATEWAYS=3
BASE=${SLUICE_CLUSTER_BASE:-25700}
BROKER=nats
ARG=
DIR=${SLUICE_CLUSTER_DIR:-$ROOT/target/cluster}
SLUICE=${SLUICE:-$ROOT/target/release/sluice}
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --gateways) GATEWAYS=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --broker) BROKER=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    [0-9]*) ARG=$1; shift ;;
    *) echo "cluster.sh: unknown argument $1 (see the header of scripts/cluster.sh)" >&2; exit 2 ;;
  esac
done

# Ports of member N (1-based): NATS client, NATS route, MQTT, gateway CoAP, gateway admin.
nats_port() { echo $((BASE + 10 * $1 + 1)); }
route_port() { echo $((BASE + 10 * $1 + 2)); }
mqtt_port() { if [ "$BROKER" = mosquitto ]; then echo $((BASE + 3)); else echo $((BASE + 10 * $1 + 3)); fi; }
coap_port() { echo $((BASE + 10 * $1 + 4)); }
admin_port() { echo $((BASE + 10 * $1 + 5)); }

die() { echo "cluster.sh: $*" >&2; exit 1; }

wait_tcp() { # PORT WHAT: until something accepts on it (20 s)
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not open TCP port $1 (see $DIR/*.log)"
}

wait_udp() { # PORT WHAT
  for _ in $(seq 200); do
    ss -uln "( sport = :$1 )" | grep -q ":$1" && return 0
    sleep 0.1
  done
  die "$2 did not open UDP port $1 (see $DIR/*.log)"
}

healthy() { # ADMIN_PORT: /healthz answers 200
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && head -1 <&3) 2>/dev/null) || return 1
  [[ $reply == *" 200 "* ]]
}

start() { # NAME COMMAND...: runs it in the background, logging to $DIR/NAME.log
  local name=$1; shift
  "$@" >"$DIR/$name.log" 2>&1 &
  echo "$!" >"$DIR/$name.pid"
}

stop() { # NAME [SIGNAL]: TERM (a clean stop) unless told, KILL after 5 s
  local pidfile=$DIR/$1.pid signal=${2:-TERM}
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

up() {
  command -v nginx >/dev/null || die "nginx is missing: apt-get install nginx libnginx-mod-stream"
  local module=/usr/lib/nginx/modules/ngx_stream_module.so
  [ -f $module ] || die "nginx's stream module is missing: apt-get install libnginx-mod-stream"
  if [ "$BROKER" = nats ]; then
    command -v nats-server >/dev/null || die "nats-server is missing: apt-get install nats-server"
  elif [ "$BROKER" = mosquitto ]; then
    command -v mosquitto >/dev/null || die "mosquitto is missing: apt-get install mosquitto"
  else
    die "--broker is nats or mosquitto, not $BROKER"
  fi
  if [ ! -x "$SLUICE" ]; then
    echo "Building sluice (release) ..."
    cargo build -q --release -p sluice
  fi
  [ -d "$DIR" ] && ls "$DIR"/*.pid >/dev/null 2>&1 && die "a deployment is running in $DIR: bash scripts/cluster.sh down first"
  rm -rf "$DIR"
  mkdir -p "$DIR"
  echo "$BROKER $GATEWAYS $BASE $PORT" >"$DIR/layout"

  if [ "$BROKER" = nats ]; then
    local routes="" i
    for i in $(seq "$GATEWAYS"); do routes="$routes nats-route://127.0.0.1:$(route_port "$i")"; done
    for i in $(seq "$GATEWAYS"); do
      cat >"$DIR/nats$i.conf" <<EOF
server_name: nats$i
listen: 127.0.0.1:$(nats_port "$i")
jetstream { store_dir: "$DIR/nats$i" }
mqtt { listen: 127.0.0.1:$(mqtt_port "$i") }
cluster {
  name: sluice
  listen: 127.0.0.1:$(route_port "$i")
  routes: [$(echo "$routes" | sed 's/^ //; s/ /, /g')]
}
EOF
      start "nats$i" nats-server -c "$DIR/nats$i.conf"
    done
    for i in $(seq "$GATEWAYS"); do wait_tcp "$(mqtt_port "$i")" "NATS node $i"; done
    # A node accepts MQTT clients only once JetStream is up across the cluster: wait for a
    # QoS 1 publish to go through on each, so that every gateway starts on its own node.
    if command -v mosquitto_pub >/dev/null; then
      for i in $(seq "$GATEWAYS"); do
        for _ in $(seq 60); do
          mosquitto_pub -h 127.0.0.1 -p "$(mqtt_port "$i")" -q 1 -t cluster/ready -m up 2>/dev/null && break
          sleep 0.5
        done
      done
    fi
  else
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$(mqtt_port 1)" >"$DIR/mosquitto.conf"
    start mosquitto mosquitto -c "$DIR/mosquitto.conf"
    wait_tcp "$(mqtt_port 1)" mosquitto
  fi

  # One secret for the deployment: a connection-mode token any gateway issued works on all.
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$DIR/sessions.key"
  chmod 600 "$DIR/sessions.key"

  local servers="" brokers j
  for i in $(seq "$GATEWAYS"); do
    # Its own node first, then the others: when its node goes, it moves to the next.
    brokers="mqtt://127.0.0.1:$(mqtt_port "$i")"
    if [ "$BROKER" = nats ]; then
      for j in $(seq "$GATEWAYS"); do [ "$j" = "$i" ] || brokers="$brokers,mqtt://127.0.0.1:$(mqtt_port "$j")"; done
    fi
    cat >"$DIR/gateway$i.yaml" <<EOF
# Gateway $i of the deployment: its own CoAP port behind the balancer, its own broker node
# first (the other nodes after it).
coap:
  bind: 127.0.0.1:$(coap_port "$i")
admin:
  bind: 127.0.0.1:$(admin_port "$i")
mqtt:
  broker: $brokers
  client_id: sluice-gateway$i
sessions:
  secret_file: sessions.key
rules:
  - rule: builtin:emqx
    config: {anonymous: true}
EOF
    start "gateway$i" "$SLUICE" run --config "$DIR/gateway$i.yaml"
    servers="$servers    server 127.0.0.1:$(coap_port "$i");\n"
  done
  for i in $(seq "$GATEWAYS"); do wait_udp "$(coap_port "$i")" "gateway $i"; done

  # One nginx worker, UDP sessions kept for a day of silence so that Observe notifications
  # still find their way back to a quiet device.
  printf "load_module $module;
daemon off;
worker_processes 1;
pid $DIR/nginx.pid.nginx;
error_log $DIR/nginx-error.log warn;
events { worker_connections 16384; }
stream {
  upstream sluice {
    hash \$remote_addr\$remote_port consistent;
$servers  }
  server {
    listen 127.0.0.1:$PORT udp;
    proxy_pass sluice;
    proxy_timeout 24h;
  }
}
" >"$DIR/nginx.conf"
  start nginx nginx -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf"
  wait_udp "$PORT" nginx

  for i in $(seq "$GATEWAYS"); do
    for _ in $(seq 100); do healthy "$(admin_port "$i")" && break; sleep 0.2; done
  done
  status
  echo "Devices: coap://127.0.0.1:$PORT (nginx, by source address over $GATEWAYS gateways)"
  echo "Stop:    bash scripts/cluster.sh down"
}

status() {
  [ -f "$DIR/layout" ] || die "no deployment in $DIR (bash scripts/cluster.sh up)"
  read -r BROKER GATEWAYS BASE PORT <"$DIR/layout"
  local i state
  for i in $(seq "$GATEWAYS"); do
    if [ "$BROKER" = nats ]; then
      state=down; [ -f "$DIR/nats$i.pid" ] && kill -0 "$(cat "$DIR/nats$i.pid")" 2>/dev/null && state=up
      echo "NATS node $i:  mqtt://127.0.0.1:$(mqtt_port "$i")  $state"
    fi
    state=down; healthy "$(admin_port "$i")" && state=healthy
    echo "gateway $i:    coap://127.0.0.1:$(coap_port "$i")  admin http://127.0.0.1:$(admin_port "$i")  $state"
  done
  [ "$BROKER" = mosquitto ] && echo "mosquitto:    mqtt://127.0.0.1:$(mqtt_port 1)"
  return 0
}

down() {
  [ -d "$DIR" ] || return 0
  local f
  for f in "$DIR"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
  echo "Stopped the deployment in $DIR."
}

layout() { [ -f "$DIR/layout" ] && read -r BROKER GATEWAYS BASE PORT <"$DIR/layout"; }

case "$CMD" in
  up) up ;;
  status) status ;;
  down) down ;;
  kill-gateway) layout; [ -n "$ARG" ] || die "which gateway? kill-gateway N"; stop "gateway$ARG" KILL; echo "Killed gateway $ARG (SIGKILL)." ;;
  kill-node) layout; [ -n "$ARG" ] || die "which node? kill-node N"; stop "nats$ARG" KILL; echo "Killed NATS node $ARG (SIGKILL)." ;;
  *) echo "usage: bash scripts/cluster.sh up|status|down|kill-gateway N|kill-node N [--port P] [--gateways N] [--base B] [--broker nats|mosquitto]" >&2; exit 2 ;;
esac
