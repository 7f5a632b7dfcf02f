#!/usr/bin/env bash
# The JavaScript client under Node over the WebSocket port against over the Unix socket
# (clients/js/test/bench.mjs), against a release server of its own in a temp data dir.
# Pass `pinned` (or `unpinned`) first: pinned runs everything under `taskset -c 0`; then,
# optionally, the numbers of sequential and pipelined calls. Needs Node 22+, or 20 (run with
# --experimental-websocket here); scripts/test.sh installs Node.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
ws_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
source scripts/own-server.sh --ws-port "$ws_port"
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then flags=(--experimental-websocket); fi
"${pin[@]}" node "${flags[@]}" clients/js/test/bench.mjs "ws://127.0.0.1:$ws_port" "$dir/latzero.sock" "${@:2}"
