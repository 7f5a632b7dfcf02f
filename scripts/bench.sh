#!/usr/bin/env bash
# The race: builds the release binaries and runs latzero-bench, which starts nats-server, a raw
# frame relay (the floor) and the latzero server itself on 127.0.0.1, pinned (taskset -c 0) and
# unpinned, and prints the tables with ratios. Extra arguments go to latzero-bench (--help), e.g.
#   scripts/bench.sh --write docs/BENCHMARKS.md
#   scripts/bench.sh blocks --write docs/BENCHMARKS.md   (memory blocks vs memcpy and Redis)
#   scripts/bench.sh sealed --write docs/BENCHMARKS.md   (calls into an encrypted pool, from Rust,
#                                                         Python and Node)
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "${1:-}" = sealed ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  python3 -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
cargo build --release -p latzero-cli -p latzero-bench
exec target/release/latzero-bench "$@"
