#!/usr/bin/env bash
# Calls from Python side by side (clients/python/bench_rpc.py): this repository's Python client
# against a release LatZero server of its own (Unix socket and TCP), and nats-py against a
# nats-server of its own, both on 127.0.0.1 in temp dirs, stopped by PID on exit.
# Pass `pinned` first to run everything under `taskset -c 0`; further arguments go to
# bench_rpc.py (--help). Installs nats-server (Debian) and nats-py (pip, into target/py) if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ "${1:-}" = pinned ]; then pin=(taskset -c 0); fi
[ $# -gt 0 ] && { [ "$1" = pinned ] || [ "$1" = unpinned ]; } && shift
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
if [ ! -d target/py/nats ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target target/py nats-py
fi
args=("$@")
set --  # a sourced script without arguments would see this one's
source scripts/own-server.sh
nats_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${pin[@]}" nats-server -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null || true; target/release/latzero stop --data-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.1; done
grep -q "Server is ready" "$dir/nats.log" || { cat "$dir/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }
tcp=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["tcp"])' "$dir/server.json")
PYTHONPATH="$PWD/target/py${PYTHONPATH:+:$PYTHONPATH}" "${pin[@]}" python3 clients/python/bench_rpc.py \
  --socket "$dir/latzero.sock" --tcp "$tcp" --nats "nats://127.0.0.1:$nats_port" "${args[@]}"
