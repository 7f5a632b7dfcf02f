#!/usr/bin/env bash
# Runs every test: unit tests, integration tests (in-process server), the end-to-end suite (the
# real `latzero` binary with separate client processes) and the doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (one time)" >&2
  cargo install cargo-nextest --locked
fi
# Debian packages, with sudo when not run as root.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "$@"
}
# The Python client's end-to-end test (crates/latzero-cli/tests/python.rs) runs it with python3.
if ! command -v python3 >/dev/null 2>&1; then
  echo "installing python3 (one time)" >&2
  apt_install python3
fi
# Its mapped block writes take the write side with libatomic's compare-and-swap (libatomic1),
# which the test expects to find.
if ! python3 -c 'import ctypes; ctypes.CDLL("libatomic.so.1")' 2>/dev/null; then
  echo "installing libatomic1 (one time)" >&2
  apt_install libatomic1
fi
# Its encrypted pools take their primitives from the cryptography package: Debian's for
# Debian's python3, else from pip into target/py.
if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "installing the cryptography package for python3 (one time)" >&2
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    apt_install python3-cryptography
  else
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    python3 -m pip install --quiet --disable-pip-version-check --target target/py cryptography
  fi
fi
if [ -d target/py/cryptography ]; then
  export PYTHONPATH="$PWD/target/py${PYTHONPATH:+:$PYTHONPATH}"
fi
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
