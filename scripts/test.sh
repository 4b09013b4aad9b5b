#!/usr/bin/env bash
# The test command of the README. On a fresh Debian machine it installs what the tests drive —
# libcoap's clients, mosquitto, nats-server, docker-registry, Node.js/npm (AssemblyScript rules),
# aiocoap and the `coap` npm package (clients without Echo support), the wasm32 Rust target —
# then checks formatting and lints, builds every Wasm rule, runs every
# test of the workspace (the fault, abuse and security tests among them) and runs each fuzz
# target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v coap-client-notls >/dev/null || need+=(libcoap3-bin)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
# NATS: a clustered broker whose MQTT interface speaks 3.1.1 only (host/tests/brokers.rs).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# The cluster scenario's UDP balancer, and `systemd-analyze verify` of deploy/sluice.service.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The reference OCI distribution registry, for rule packages pushed and pulled (host/tests/registry.rs).
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v npm >/dev/null || need+=(npm)
# pip, for aiocoap (below).
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The README's Operate commands call the admin API with curl (host/tests/admin.rs).
command -v curl >/dev/null || need+=(curl)
# Headless Chromium drives the admin dashboard over the DevTools protocol (host/tests/dashboard.rs).
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} ..."
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# mosquitto lives in /usr/sbin, which is not always on PATH.
export PATH="$PATH:/usr/sbin"

# Rust rules compile to wasm32-unknown-unknown.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "Installing the wasm32-unknown-unknown Rust target ..."
  rustup target add wasm32-unknown-unknown
fi

# Two CoAP client libraries nobody here wrote, neither of which answers Echo (host/tests/clients.rs):
# aiocoap from PyPI and the `coap` npm package (tests/clients/node, locked by its package-lock.json).
if ! python3 -c 'import aiocoap' 2>/dev/null; then
  echo "Installing aiocoap ..."
  python3 -m pip install --quiet --disable-pip-version-check aiocoap==0.4.17 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages aiocoap==0.4.17
fi
# amqtt, a broker that speaks MQTT 3.1.1 only and never answers an MQTT 5 CONNECT (host/tests/brokers.rs).
if ! command -v amqtt >/dev/null; then
  echo "Installing amqtt ..."
  python3 -m pip install --quiet --disable-pip-version-check amqtt==0.12.1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages amqtt==0.12.1
fi
(cd tests/clients/node && npm ci --no-audit --no-fund --silent)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
bash scripts/build-rules.sh
# The AssemblyScript SDK and rules, under node with an in-memory host.
(cd sdk/assemblyscript && npm ci --no-audit --no-fund --silent && npm test --silent)
(cd examples/enrich-as && npm test --silent)
(cd tests/rules/fault-as && npm test --silent)
cargo test --workspace -- --test-threads=2
# Every fuzz target builds (nightly, cargo-fuzz; the script installs them when missing) and runs
# for a few seconds; past findings were replayed on stable by host/tests/fuzz_regressions.rs.
bash scripts/fuzz.sh --seconds 10
