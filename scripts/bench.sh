#!/usr/bin/env bash
# Builds the release binaries and runs the RPC benchmark, pinned (taskset -c 0) and unpinned,
# over TCP and the Unix socket. Extra arguments go to latzero-bench (see --help), e.g.
#   scripts/bench.sh --write /tmp/table.md
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v taskset >/dev/null 2>&1; then
  echo "installing util-linux for taskset" >&2
  apt-get update -qq && apt-get install -y -qq util-linux
fi
cargo build --release -p latzero-cli -p latzero-bench
exec target/release/latzero-bench "$@"
