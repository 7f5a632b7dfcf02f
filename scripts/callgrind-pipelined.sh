#!/usr/bin/env bash
# Instructions per *pipelined* call, counted by valgrind's callgrind (see scripts/callgrind.sh
# for the sequential figures). Runs `latzero-bench --placement pinned --peers unix` under
# callgrind, with the server it starts under callgrind too, twice — with N and with 2N pipelined
# calls (64 in flight) — and prints (instructions with 2N - instructions with N) / N for the
# server and for the bench process (the caller's and the handler's SDK clients together).
# With `fanout`, the same for emits fanned out to 4 receivers: per emit, the server's and the
# bench process's (the emitter's and the four receivers' SDK clients together).
# It also prints the atomic read-modify-write instructions per call of each (scripts/
# count-atomics.py): callgrind counts them as one instruction each, but each costs ~5 ns here.
#   scripts/callgrind-pipelined.sh [N] [pipelined|fanout]     (defaults 20000, pipelined)
# KEEP=DIR keeps the callgrind files of the 2N run (server.out, bench.out).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq valgrind
fi
cargo build --release -q -p latzero-cli -p latzero-bench
root=$PWD
# Made up front: a copy into a missing directory would end `measure` before it removes its
# temporary directory.
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; fi
n=${1:-20000}
workload=${2:-pipelined}
case $workload in
  pipelined|fanout) ;;
  *) echo "usage: $0 [N] [pipelined|fanout]" >&2; exit 2 ;;
esac

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'; }
atomics() { python3 scripts/count-atomics.py "$1" | awk 'END { print $1 }'; }

measure() { # $1 = calls (or emits); prints "server_ir bench_ir server_atomics bench_atomics"
  local calls=$1 d sizes
  if [ "$workload" = fanout ]; then
    sizes=(--pipelined 100 --fanout "$calls")
  else
    sizes=(--pipelined "$calls" --fanout 100)
  fi
  d=$(mktemp -d)
  # The bench stops its server with SIGKILL, which callgrind cannot survive to write its
  # profile: the wrapper runs the server in the background, so the bench kills only the
  # wrapper, and the server is stopped with SIGTERM below.
  cat > "$d/server.sh" <<EOF
#!/usr/bin/env bash
valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$d/server.out" "$root/target/release/latzero" "\$@" &
echo \$! > "$d/server.pid"
wait
EOF
  chmod +x "$d/server.sh"
  taskset -c 0 valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$d/bench.out" \
    target/release/latzero-bench --server "$d/server.sh" --placement pinned --peers unix --rounds 1 \
    --seq 10 --warmup 10 --multi 100 "${sizes[@]}" > "$d/bench.log" 2>&1 ||
    { cat "$d/bench.log" >&2; exit 1; }
  local pid
  pid=$(cat "$d/server.pid")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  echo "$(total "$d/server.out") $(total "$d/bench.out") $(atomics "$d/server.out") $(atomics "$d/bench.out")"
  if [ -n "${KEEP:-}" ] && [ "$calls" -gt "$n" ]; then cp "$d"/*.out "$KEEP"/; fi
  rm -rf "$d"
}

read -r s1 b1 sa1 ba1 < <(measure "$n")
read -r s2 b2 sa2 ba2 < <(measure $((2 * n)))
per() { awk -v a="$1" -v b="$2" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }'; }
if [ "$workload" = fanout ]; then
  echo "emits: $n more (fanned out to 4 receivers, 64-byte payload, Unix socket, pinned)"
  echo "server instructions per emit: $(( (s2 - s1) / n ))"
  echo "bench process (emitter + 4 receivers' SDK) instructions per emit: $(( (b2 - b1) / n ))"
  echo "atomic read-modify-writes per emit: server $(per "$sa1" "$sa2"), bench process $(per "$ba1" "$ba2")"
else
  echo "calls: $n more (pipelined, 64 in flight, 64-byte payload, Unix socket, pinned)"
  echo "server instructions per call: $(( (s2 - s1) / n ))"
  echo "bench process (caller + handler SDK) instructions per call: $(( (b2 - b1) / n ))"
  echo "atomic read-modify-writes per call: server $(per "$sa1" "$sa2"), bench process $(per "$ba1" "$ba2")"
fi
