#!/usr/bin/env bash
# Instructions to check one received payload, counted by valgrind's callgrind: the server's
# check of every call's data and response (`one_value`), the SDK's read of a payload it
# receives (`spans_one_value`, the outline only), and serde_json's validation alone. Runs the
# proto crate's `payload_check` example with N and 2N checks and prints the difference per check.
#   scripts/callgrind-payload.sh [N] [BYTES] [object|string]     (defaults 200, 4000, object)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq valgrind
fi
n=${1:-200}
bytes=${2:-4000}
kind=${3:-object}
cargo build --release -q -p latzero-proto --example payload_check
bin=${CARGO_TARGET_DIR:-target}/release/examples/payload_check
count() { # $1 = check, $2 = N
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$1" "$2" "$bytes" "$kind" >/dev/null 2>&1
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
  rm -f "$out"
}
echo "$("$bin" server 1 "$bytes" "$kind" | sed 's/^server: 1 checks of a //')"
for check in server sdk serde; do
  a=$(count "$check" "$n")
  b=$(count "$check" $((2 * n)))
  echo "$check: $(((b - a) / n)) instructions per payload"
done
