#!/usr/bin/env bash
# Python's reads and writes of a memory block, in place against through the server
# (clients/python/bench_blocks.py), against a release server of its own in a temp data dir; and
# sealed records of an encrypted pool read by id (through the server) against through a mapping.
# Writes in place need libatomic (libatomic1), the sealed reads the cryptography package:
# installed here if missing (scripts/python-deps.sh).
# Pass `pinned` to run everything under `taskset -c 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
source scripts/python-deps.sh
set --  # a sourced script without arguments would see this one's
source scripts/own-server.sh
# An encrypted pool for the sealed reads (its keys in the server's temp dir).
target/release/latzero keys generate --data-dir "$dir" --app bench-owner vault --out "$dir/vault.keys" >/dev/null
"${pin[@]}" python3 clients/python/bench_blocks.py "$dir/latzero.sock" "$dir/vault.keys"
