#!/usr/bin/env bash
# Runs every test: unit tests, integration tests (in-process server), the end-to-end suite (the
# real `latzero` binary with separate client processes) and the doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (one time)" >&2
  cargo install cargo-nextest --locked
fi
# python3 with libatomic1 and the cryptography package, for the Python client's end-to-end tests
# (crates/latzero-cli/tests/python.rs); and `apt_install`.
source scripts/python-deps.sh
# The JavaScript client's end-to-end test (crates/latzero-cli/tests/js.rs) runs it under Node,
# which needs a WebSocket: Node 22+ has one, 20 behind a flag (the test passes it); older Node
# gets the ws package from npm.
if ! command -v node >/dev/null 2>&1; then
  echo "installing Node.js (one time)" >&2
  apt_install nodejs npm
fi
# The browser test (crates/latzero-cli/tests/browser.rs) runs the JavaScript client in headless
# Chromium; LATZERO_CHROMIUM names another Chromium-based browser.
if [ -z "${LATZERO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Chromium (one time)" >&2
  apt_install chromium
fi
has_websocket() { node "$@" -e "process.exit(typeof WebSocket === 'function' ? 0 : 1)" 2>/dev/null; }
if ! has_websocket && ! has_websocket --experimental-websocket; then
  if [ ! -f target/js/node_modules/ws/wrapper.mjs ]; then
    echo "installing the ws package for Node $(node --version) (one time)" >&2
    command -v npm >/dev/null 2>&1 || apt_install npm
    npm install --silent --prefix target/js ws@8
  fi
  export LATZERO_JS_WS="$PWD/target/js/node_modules/ws/wrapper.mjs"
fi
cargo test --workspace --doc
cargo nextest run --workspace --all-targets --no-fail-fast
