# Sourced by the client benchmarks (bench-python-blocks.sh, bench-js.sh): builds the release
# server and starts it, under "${pin[@]}" (set it first; empty for unpinned), in a temp data dir
# of its own ($dir) with any further `start` arguments given to `source`; waits for its Unix
# socket; stops it and removes the dir on exit.
#   pin=(taskset -c 0); source scripts/own-server.sh --ws-port 45228
cargo build --release -p latzero-cli --quiet
dir=$(mktemp -d)
trap 'target/release/latzero stop --data-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"${pin[@]}" target/release/latzero start --port 0 --data-dir "$dir" --log-level warn "$@" >"$dir/server.log" 2>&1 &
for _ in $(seq 1 100); do [ -S "$dir/latzero.sock" ] && break; sleep 0.1; done
if [ ! -S "$dir/latzero.sock" ]; then
  cat "$dir/server.log" >&2
  echo "the server did not start (its log is above)" >&2
  exit 1
fi
