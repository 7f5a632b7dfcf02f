#!/usr/bin/env bash
# Runs every test: unit tests, integration tests (in-process server), the end-to-end suite (the
# real `latzero` binary with separate client processes) and the doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (one time)" >&2
  cargo install cargo-nextest --locked
fi
cargo test --workspace --doc
cargo nextest run --workspace --all-targets --no-fail-fast
