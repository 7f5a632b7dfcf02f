// The JavaScript client under Node: the same calls over the server's WebSocket port and over
// its Unix socket (a `latzero://` URL), side by side, and their ratio. A caller and a handler
// client on the same transport in this one process; sequential calls (p50, p99) and pipelined
// calls (64 in flight), 64-byte payloads. Needs a running server with --ws-port;
// scripts/bench-js.sh starts one.
//
//   node clients/js/test/bench.mjs ws://127.0.0.1:P /path/to/latzero.sock [SEQ] [PIPELINED]

import { connect } from "../latzero.mjs";

const [wsUrl, socket, seqArg, pipeArg] = process.argv.slice(2);
const seq = Number(seqArg ?? 5000);
const pipelined = Number(pipeArg ?? 50000);
const payload = { p: "x".repeat(56) }; // 64 bytes of JSON

async function measure(name, open) {
  const handler = await open(`bench-${name}-h`);
  await handler.handle("echo", ({ data }) => data);
  const caller = await open(`bench-${name}-c`);
  for (let i = 0; i < 500; i++) await caller.call("bench", "echo", payload);
  const lat = [];
  for (let i = 0; i < seq; i++) {
    const t = process.hrtime.bigint();
    await caller.call("bench", "echo", payload);
    lat.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  lat.sort((a, b) => a - b);
  const at = (q) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
  let next = 0;
  const t = process.hrtime.bigint();
  const lane = async () => {
    while (next++ < pipelined) await caller.call("bench", "echo", payload);
  };
  await Promise.all(Array.from({ length: 64 }, lane));
  const rate = pipelined / (Number(process.hrtime.bigint() - t) / 1e9);
  caller.close();
  handler.close();
  return { p50: at(0.5), p99: at(0.99), rate };
}

const ws = await measure("ws", (app) => connect(wsUrl, app, { pools: ["bench"], ephemeral: true }));
const unix = await measure("unix", (app) =>
  connect(`latzero://${app}?socket=${encodeURIComponent(socket)}&pools=bench`, { ephemeral: true }),
);
const f = (x) => x.toFixed(1);
console.log(`node ${process.version}; ${seq} sequential, ${pipelined} pipelined calls (64 in flight), 64 B`);
console.log("| | WebSocket port | Unix socket | unix ÷ ws |");
console.log("|---|---:|---:|---:|");
console.log(`| seq p50 µs | ${f(ws.p50)} | ${f(unix.p50)} | ${(unix.p50 / ws.p50).toFixed(2)} |`);
console.log(`| seq p99 µs | ${f(ws.p99)} | ${f(unix.p99)} | ${(unix.p99 / ws.p99).toFixed(2)} |`);
console.log(`| pipelined calls/s | ${Math.round(ws.rate)} | ${Math.round(unix.rate)} | ${(unix.rate / ws.rate).toFixed(2)} |`);
process.exit(0);
