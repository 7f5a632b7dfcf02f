#!/usr/bin/env bash
# The JavaScript client under Node over the WebSocket port against over the Unix socket, and
# nats.js against nats-server (clients/js/test/bench.mjs), against a release server and a
# nats-server of their own on 127.0.0.1 (stopped by PID on exit).
# Pass `pinned` (or `unpinned`) first: pinned runs everything under `taskset -c 0`; then,
# optionally, the numbers of sequential and pipelined calls. Needs Node 22+, or 20 (run with
# --experimental-websocket here); scripts/test.sh installs Node. Installs nats-server (Debian)
# and the nats npm package (into target/js) if missing. Makes an encrypted pool `vault` for
# the sealed block reads.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
[ -f target/js/node_modules/nats/package.json ] || npm install --silent --prefix target/js nats@2
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ws_port=$(free_port)
source scripts/own-server.sh --ws-port "$ws_port"
nats_port=$(free_port)
"${pin[@]}" nats-server -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null || true; target/release/latzero stop --data-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.1; done
grep -q "Server is ready" "$dir/nats.log" || { cat "$dir/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }
# An encrypted pool for the sealed block reads (its keys in the server's temp dir).
target/release/latzero keys generate --data-dir "$dir" --app bench-owner vault --out "$dir/vault.keys" >/dev/null
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then flags=(--experimental-websocket); fi
NATS_URL="nats://127.0.0.1:$nats_port" LATZERO_JS_NATS="$PWD/target/js/node_modules/nats" \
  LATZERO_JS_VAULT_KEYS="$dir/vault.keys" \
  "${pin[@]}" node "${flags[@]}" clients/js/test/bench.mjs "ws://127.0.0.1:$ws_port" "$dir/latzero.sock" "${@:2}"
