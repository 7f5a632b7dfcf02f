#!/usr/bin/env bash
# The JavaScript client under Node over the WebSocket port against over the Unix socket
# (clients/js/test/bench.mjs), against a release server of its own in a temp data dir.
# Pass `pinned` to run everything under `taskset -c 0`. Needs Node 22+, or 20 (run with
# --experimental-websocket here); scripts/test.sh installs Node.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p latzero-cli --quiet
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
dir=$(mktemp -d)
trap 'target/release/latzero stop --data-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
ws_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${pin[@]}" target/release/latzero start --port 0 --ws-port "$ws_port" --data-dir "$dir" --log-level warn >"$dir/server.log" 2>&1 &
for _ in $(seq 1 100); do [ -S "$dir/latzero.sock" ] && break; sleep 0.1; done
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then flags=(--experimental-websocket); fi
"${pin[@]}" node "${flags[@]}" clients/js/test/bench.mjs "ws://127.0.0.1:$ws_port" "$dir/latzero.sock" "${@:2}"
