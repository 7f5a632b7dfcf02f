#!/usr/bin/env bash
# Python's reads of a memory block, mapped against through the server
# (clients/python/bench_blocks.py), against a release server of its own in a temp data dir.
# Pass `pinned` to run everything under `taskset -c 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
set --  # a sourced script without arguments would see this one's
source scripts/own-server.sh
"${pin[@]}" python3 clients/python/bench_blocks.py "$dir/latzero.sock"
