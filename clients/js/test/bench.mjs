// The JavaScript client under Node: the same calls over the server's WebSocket port and over
// its Unix socket (a `latzero://` URL), side by side, and their ratio; with NATS_URL and
// LATZERO_JS_NATS (the `nats` npm package's directory), nats.js against that nats-server too.
// A caller and a handler client on the same transport in this one process; sequential calls
// (p50, p99), pipelined calls (64 in flight), and events fanned out to 4 receiver clients
// (fire-and-forget `emit` against nats.js `publish`; events/s until every receiver has them
// all), 64-byte payloads; then reads of a memory block, directly from its file against through
// the server, for a few sizes, and (with LATZERO_JS_VAULT_KEYS) sealed records read by id
// against through an attached Block. Needs a running server with
// --ws-port; scripts/bench-js.sh starts one, and nats-server.
//
//   node clients/js/test/bench.mjs ws://127.0.0.1:P /path/to/latzero.sock [SEQ] [PIPELINED]

import { createRequire } from "node:module";
import path from "node:path";
import { connect, PoolKeys } from "../latzero.mjs";

const [wsUrl, socket, seqArg, pipeArg] = process.argv.slice(2);
const seq = Number(seqArg ?? 5000);
const pipelined = Number(pipeArg ?? 50000);
const fanout = pipelined;
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
  // Fan-out: four receivers count; the caller emits without waiting for receipts.
  const counts = [0, 0, 0, 0];
  let allIn;
  const arrived = new Promise((resolve) => (allIn = resolve));
  const receivers = [];
  for (const i of counts.keys()) {
    const rx = await open(`bench-${name}-rx${i}`);
    await rx.handle("ev", () => {
      if (++counts[i] === fanout && counts.every((c) => c === fanout)) allIn();
    });
    receivers.push(rx);
  }
  const t2 = process.hrtime.bigint();
  for (let i = 0; i < fanout; i++) await caller.emit("bench", "ev", payload, { confirm: false });
  await arrived;
  const fan = fanout / (Number(process.hrtime.bigint() - t2) / 1e9);
  for (const rx of receivers) rx.close();
  caller.close();
  handler.close();
  return { p50: at(0.5), p99: at(0.99), rate, fan };
}

const ws = await measure("ws", (app) => connect(wsUrl, app, { pools: ["bench"], ephemeral: true }));
const unix = await measure("unix", (app) =>
  connect(`latzero://${app}?socket=${encodeURIComponent(socket)}&pools=bench`, { ephemeral: true }),
);
// nats.js in the same shape: a subscriber that responds with the payload, and `request`.
let nats;
if (process.env.NATS_URL) {
  const lib = createRequire(path.join(process.env.LATZERO_JS_NATS, "package.json"))(process.env.LATZERO_JS_NATS);
  const bytes = new Uint8Array(64).fill(120); // 64 bytes, as LatZero's payload is on the wire
  nats = await measure("nats", async () => {
    const nc = await lib.connect({ servers: process.env.NATS_URL });
    return {
      handle: async (subject, fn) => {
        // The echo handler responds with the payload; the fan-out's receivers count.
        nc.subscribe(subject, { callback: subject === "echo" ? (_e, m) => m.respond(m.data) : () => fn() });
        await nc.flush();
      },
      call: (_pool, subject) => nc.request(subject, bytes, { timeout: 30000 }),
      emit: (_pool, subject) => nc.publish(subject, bytes),
      close: () => nc.close(),
    };
  });
}
const f = (x) => x.toFixed(1);
const r = (a, b) => (a / b).toFixed(2);
console.log(`node ${process.version}; ${seq} sequential, ${pipelined} pipelined calls (64 in flight), 64 B`);
const cols = nats ? [ws, unix, nats] : [ws, unix];
console.log(`| | WebSocket port | Unix socket |${nats ? " NATS (nats.js) |" : ""} unix ÷ ws |${nats ? " unix ÷ NATS |" : ""}`);
console.log(`|---|${"---:|".repeat(cols.length + (nats ? 2 : 1))}`);
for (const [label, pick, fmt] of [
  ["seq p50 µs", (x) => x.p50, f],
  ["seq p99 µs", (x) => x.p99, f],
  ["pipelined calls/s", (x) => x.rate, Math.round],
  ["fan-out ×4 events/s", (x) => x.fan, Math.round],
]) {
  const ratios = [r(pick(unix), pick(ws))].concat(nats ? [r(pick(unix), pick(nats))] : []);
  console.log(`| ${label} | ${cols.map((x) => fmt(pick(x))).join(" | ")} | ${ratios.join(" | ")} |`);
}
// Reads of a memory block: directly from its file (`Block.read` of a block attached under
// Node) against through the server (`blockRead`, on the Unix socket).
const lz = await connect(`latzero://bench-blocks?socket=${encodeURIComponent(socket)}&pools=bench`, { ephemeral: true });
const timed = async (n, read) => {
  for (let i = 0; i < Math.min(n, 100); i++) await read();
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await read();
  return Number(process.hrtime.bigint() - t) / 1000 / n;
};
console.log();
console.log("| block size | direct read µs | read through the server µs | server ÷ direct |");
console.log("|---:|---:|---:|---:|");
for (const [size, n] of [[64, 20000], [4096, 20000], [65536, 5000], [1 << 20, 500]]) {
  await lz.blockCreate("bench", "b", size);
  await lz.blockWrite("bench", "b", new Uint8Array(size).fill(7));
  const block = await lz.blockAttach("bench", "b");
  if (!block.direct) throw new Error(`not read directly: ${block.whyNotDirect}`);
  const direct = await timed(n, () => block.read());
  const served = await timed(n, () => lz.blockRead("bench", "b"));
  console.log(`| ${size} | ${direct.toFixed(2)} | ${served.toFixed(1)} | ${Math.round(served / direct)} |`);
  block.close();
  await lz.blockDelete("bench", "b");
}
// With LATZERO_JS_VAULT_KEYS (a keys file of the encrypted pool `vault`): its sealed records
// read by block id (through the server) against through an attached Block (from its file).
if (process.env.LATZERO_JS_VAULT_KEYS) {
  const vault = await lz.encryptedPool("vault", await PoolKeys.fromFile("vault", process.env.LATZERO_JS_VAULT_KEYS));
  console.log();
  console.log("| sealed record | readBlock through the server µs | readBlock of a Block µs | server ÷ Block |");
  console.log("|---:|---:|---:|---:|");
  for (const [size, n] of [[64, 3000], [4096, 3000], [65536, 1000]]) {
    // Room for the record: its length, nonce, tag and signature beside the plaintext.
    await lz.blockCreate("vault", "s", size + 4 + 28 + 16 + 64);
    await vault.writeBlock("s", new Uint8Array(size).fill(7));
    const block = await lz.blockAttach("vault", "s");
    if (!block.direct) throw new Error(`not read directly: ${block.whyNotDirect}`);
    const served = await timed(n, () => vault.readBlock("s"));
    const direct = await timed(n, () => vault.readBlock(block));
    console.log(`| ${size} | ${served.toFixed(1)} | ${direct.toFixed(1)} | ${(served / direct).toFixed(1)} |`);
    block.close();
    await lz.blockDelete("vault", "s");
  }
}
lz.close();
process.exit(0);
