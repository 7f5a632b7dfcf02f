#!/usr/bin/env bash
# Python's reads of a memory block, mapped against through the server
# (clients/python/bench_blocks.py), against a release server of its own in a temp data dir.
# Pass `pinned` to run everything under `taskset -c 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p latzero-cli --quiet
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
dir=$(mktemp -d)
trap 'target/release/latzero stop --data-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"${pin[@]}" target/release/latzero start --port 0 --data-dir "$dir" --log-level warn >"$dir/server.log" 2>&1 &
for _ in $(seq 1 100); do [ -S "$dir/latzero.sock" ] && break; sleep 0.1; done
"${pin[@]}" python3 clients/python/bench_blocks.py "$dir/latzero.sock"
