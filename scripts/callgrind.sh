#!/usr/bin/env bash
# Instructions per call, counted by valgrind's callgrind: repeatable on this noisy VM where
# wall-clock figures move 15-20% between runs, so small changes can be compared.
#
# Runs the release server, a `latzero reply` echo handler and a `latzero call --count N` caller,
# each under callgrind, twice — with N calls and with none — and prints
# (instructions with N - instructions with 0) / N for the server, the caller and the handler.
#   scripts/callgrind.sh [N]     (default 20000)
# KEEP=DIR keeps the callgrind files (server.out, caller.out, handler.out) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq valgrind
fi
cargo build --release -q -p latzero-cli
bin=target/release/latzero
n=${1:-20000}
payload='"0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"'

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'; }

measure() { # $1 = calls; prints "server_ir caller_ir handler_ir"
  local calls=$1 d
  d=$(mktemp -d)
  valgrind --tool=callgrind --callgrind-out-file="$d/server.out" \
    "$bin" start -d "$d" -p 0 --log-level warn > "$d/server.log" 2>&1 &
  local server=$!
  # The server prints its listening line once bound (slow under valgrind).
  until grep -q " listening on " "$d/server.log" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$d/server.log" >&2; exit 1; }
    sleep 0.2
  done
  valgrind --tool=callgrind --callgrind-out-file="$d/handler.out" \
    "$bin" reply -d "$d" --app echo --pool p echo > "$d/reply.log" 2>&1 &
  local reply=$!
  until grep -q '"event":"ready"' "$d/reply.log" 2>/dev/null; do
    kill -0 "$reply" 2>/dev/null || { cat "$d/reply.log" >&2; exit 1; }
    sleep 0.1
  done
  if [ "$calls" -gt 0 ]; then
    valgrind --tool=callgrind --callgrind-out-file="$d/caller.out" \
      "$bin" call -d "$d" --app caller --pool p echo "$payload" --count "$calls" > /dev/null 2>&1
  else
    valgrind --tool=callgrind --callgrind-out-file="$d/caller.out" \
      "$bin" call -d "$d" --app caller --pool p nobody-serves-this > /dev/null 2>&1 || true
  fi
  kill "$reply"; wait "$reply" 2>/dev/null || true
  "$bin" stop -d "$d" > /dev/null
  wait "$server" || true
  echo "$(total "$d/server.out") $(total "$d/caller.out") $(total "$d/handler.out")"
  if [ -n "${KEEP:-}" ]; then cp "$d"/*.out "$KEEP"/; fi
  rm -rf "$d"
}

read -r s0 c0 h0 < <(measure 0)
read -r s1 c1 h1 < <(measure "$n")
echo "calls: $n (sequential, 64-byte payload, Unix socket)"
echo "server instructions per call: $(( (s1 - s0) / n ))"
echo "caller instructions per call: $(( (c1 - c0) / n ))"
echo "handler instructions per call: $(( (h1 - h0) / n ))"
