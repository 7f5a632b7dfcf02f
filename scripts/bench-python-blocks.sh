#!/usr/bin/env bash
# Python's reads and writes of a memory block, in place against through the server
# (clients/python/bench_blocks.py), against a release server of its own in a temp data dir.
# Writes in place need libatomic (libatomic1), installed here if missing.
# Pass `pinned` to run everything under `taskset -c 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
if ! python3 -c 'import ctypes; ctypes.CDLL("libatomic.so.1")' 2>/dev/null; then
  echo "installing libatomic1" >&2
  apt-get update -qq && apt-get install -y -qq libatomic1
fi
set --  # a sourced script without arguments would see this one's
source scripts/own-server.sh
"${pin[@]}" python3 clients/python/bench_blocks.py "$dir/latzero.sock"
