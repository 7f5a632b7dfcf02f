// End-to-end test of clients/js/latzero.mjs under Node against a real server, run by
// crates/latzero-cli/tests/js.rs, which starts `latzero start` and a `latzero reply` worker
// serving `echo` in pool `demo`, and restarts the server when this prints `restart`. The URL is
// the server's WebSocket port (`latzero start --ws-port P`), or a `latzero://{app}...` URL for
// its Unix socket or TCP port (checks.mjs fills in `{app}`).
// Before them, three checks of its own: two stand-in servers (`grantThenDrop`, `damagedFrames`),
// and a handler that ends while its connection closes (`answerWhileClosing`).
// Prints `ok NAME` per check (checks.mjs) and `done` at the end; a failure prints `FAIL` with
// the reason and exits 1.
//
//   LATZERO_URL=ws://127.0.0.1:P node clients/js/test/e2e.mjs
//   LATZERO_URL='latzero://{app}?socket=/path/latzero.sock' node clients/js/test/e2e.mjs

const url = process.env.LATZERO_URL;
const options = {};
if (url.startsWith("ws") && typeof globalThis.WebSocket !== "function") {
  // Node before 22 without --experimental-websocket: the ws package, if scripts/test.sh got it.
  options.WebSocket = (await import(process.env.LATZERO_JS_WS)).default;
}

/** `b` (bytes) as a frame: its length, then it. */
const frame = (b) => {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(b.length);
  return Buffer.concat([head, b]);
};

/** A stand-in server on a free TCP port: `answer(sock, message, n)` for each JSON frame a client
 * sends, `n` counting from 0 (the handshake). Node only (a page has no listener). */
async function standIn(answer) {
  const net = await import("node:net");
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    let seen = 0;
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const f = JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString());
        buf = buf.subarray(4 + buf.readUInt32BE(0));
        answer(sock, f, seen++);
      }
    });
    sock.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/** A stand-in server that grants a lock and ends the connection in the same write (a frame too
 * large to read right behind the grant): the lease ended with the connection before blockLock
 * could take it up, so it must not be taken for one held. */
async function grantThenDrop(connect, LatZeroError) {
  const server = await standIn((sock, f, n) => {
    if (n === 0) {
      sock.write(frame(Buffer.from(JSON.stringify({ action: "handshake_ack", in_reply_to: f.id, pools: ["demo"], triggers: [] }))));
    } else if (f.action === "block_lock") {
      const locked = { action: "block_locked", in_reply_to: f.id, pool: "demo", block_id: "b", mode: "exclusive", lease_ms: 30000, renewed: false };
      sock.write(Buffer.concat([frame(Buffer.from(JSON.stringify(locked))), Buffer.from([0xff, 0xff, 0xff, 0xff])]));
    }
  });
  try {
    const c = await connect(`latzero://js-dropping@127.0.0.1:${server.address().port}?pools=demo`, { reconnect: false });
    let e;
    try {
      await c.blockLock("demo", "b");
    } catch (err) {
      e = err;
    }
    if (!(e instanceof LatZeroError) || e.code !== "DISCONNECTED" || e.sent !== true) {
      throw new Error(`a lock granted just before the connection drops: ${e?.stack ?? "granted"}`);
    }
    console.log("ok a lock granted just before the connection drops");
    await c.close();
  } finally {
    server.close();
  }
}

/** A stand-in server whose frames do not all read: each such frame is skipped with a warning,
 * the connection stays, and a reply right behind them is still taken (a frame that was `null`
 * ended a Node process). A handshake answer that does not read fails the connect. Node only. */
async function damagedFrames(connect, LatZeroError) {
  const damaged = [
    Buffer.alloc(0), Buffer.from([0xff, 0xfe]), "{not json", "[1,2]", "null", '"s"', "7",
    Buffer.from([0, 0, 0]), Buffer.from([0, 0, 0, 0, 9, 0x7b, 0x7d]), Buffer.from([0, 0, 0, 0, 2, 0x5b, 0x5d]),
  ].map((b) => (typeof b === "string" ? Buffer.from(b) : b));
  const server = await standIn((sock, f, n) => {
    if (n === 0) {
      const ack = { action: "handshake_ack", in_reply_to: f.id, pools: ["demo"], triggers: [] };
      sock.write(f.app_id === "js-damaged-ack" ? frame(Buffer.from("null")) : frame(Buffer.from(JSON.stringify(ack))));
    } else {
      const ok = Buffer.from(JSON.stringify({ action: "response", in_reply_to: f.id, status: "ok", response: "read" }));
      sock.write(Buffer.concat([...damaged, ok].map(frame)));
    }
  });
  const warn = console.warn;
  const warned = [];
  console.warn = (...args) => warned.push(args.join(" "));
  try {
    const at = `127.0.0.1:${server.address().port}`;
    const c = await connect(`latzero://js-damaged@${at}?pools=demo`, { reconnect: false });
    const lost = [];
    c.on("disconnected", (d) => lost.push(d));
    const answers = [await c.call("demo", "x"), await c.call("demo", "x")];
    if (answers.join() !== "read,read" || lost.length) {
      throw new Error(`a reply behind frames that do not read: ${JSON.stringify({ answers, lost })}`);
    }
    const skipped = warned.filter((w) => w.startsWith("latzero: skipped a frame"));
    if (skipped.length !== 2 * damaged.length) throw new Error(`each skipped with a warning: ${JSON.stringify(warned)}`);
    console.log("ok a reply behind frames that do not read, each skipped with a warning");
    await c.close();
    let e;
    try {
      await connect(`latzero://js-damaged-ack@${at}`, { reconnect: false });
    } catch (err) {
      e = err;
    }
    if (!(e instanceof LatZeroError) || e.code !== "PROTOCOL" || !e.message.includes("does not read")) {
      throw new Error(`a handshake answer that does not read: ${e?.stack ?? "connected"}`);
    }
    console.log("ok a handshake answer that does not read");
  } finally {
    console.warn = warn;
    server.close();
  }
}

/** A handler that ends while its connection is closing (a WebSocket's readyState 2 before its
 * close event) has no one to answer: that must not become a rejection, which ends a Node
 * process. */
async function answerWhileClosing(Client) {
  const c = new Client("latzero://js-closing", "js-closing", {}, { socket: "/nonexistent" });
  c._ws = { readyState: 2, send() {} };
  c._handlers.set("t", async () => 1);
  c._handlers.set("f", async () => {
    throw new Error("no");
  });
  await c._deliver({ action: "trigger", id: 1, process: "t", pool: "demo" }, true);
  await c._deliver({ action: "trigger", id: 2, process: "f", pool: "demo" }, true);
  console.log("ok a handler that ends while its connection closes");
}

try {
  // Imported here, so that a module that fails to load is reported too.
  const { run } = await import("./checks.mjs");
  const { connect, LatZeroError, Client } = await import("../latzero.mjs");
  await grantThenDrop(connect, LatZeroError);
  await answerWhileClosing(Client);
  await damagedFrames(connect, LatZeroError);
  await run(url, (line) => console.log(line), options);
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
