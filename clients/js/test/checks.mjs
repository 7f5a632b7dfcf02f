// The end-to-end checks of clients/js/latzero.mjs, shared by the Node driver (e2e.mjs) and the
// browser page (browser.html). `run(url, log, options)` expects a server on `url` with a
// `latzero reply` worker serving `echo` in pool `demo`, and reports through `log(line)`: `ok NAME`
// per check, and `restart`, which the driver answers by stopping and starting the server (a
// promise `log` returns is awaited). It throws at the first failed check. `options` are passed
// to every `connect` (a WebSocket constructor, say). `url` is a WebSocket URL, or under Node a
// `latzero://{app}...` URL, whose `{app}` each connection fills in with its app id.

import { connect as open, HandlerError, LatZeroError, parseUrl } from "../latzero.mjs";

async function rejects(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

function once(client, event, ms = 10000, which = () => true) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    client.on(event, (d) => {
      if (!which(d)) return;
      clearTimeout(t);
      resolve(d);
    });
  });
}

/** Events in order: `put` from a callback, `until(pred)` waits for the first that matches. */
function queue() {
  const items = [];
  const waiters = [];
  return {
    put: (x) => (waiters.length ? waiters.shift()(x) : items.push(x)),
    async until(pred, ms = 10000) {
      for (;;) {
        const x = items.length
          ? items.shift()
          : await new Promise((resolve, reject) => {
              const t = setTimeout(() => reject(new Error(`no event within ${ms} ms`)), ms);
              waiters.push((v) => {
                clearTimeout(t);
                resolve(v);
              });
            });
        if (pred(x)) return x;
      }
    },
  };
}

/** Node only: a direct read keeps to the block's seqlock (PROTOCOL.md §7.1), against writes
 * made in place meanwhile by the driver (`churn PATH`, answered by a writer of the Rust memory
 * crate filling the block with one byte per write until `churned`), and against a writer that
 * died mid-write (its pid and an odd `seq` put into the header here), which the server repairs.
 * And a Block collected without `close` closes its file. `block` is 16 bytes, attached by
 * `client`, holding 9,0,1 at 0. */
async function directReads(client, block, log, check) {
  const fs = await import("node:fs");
  const { spawnSync } = await import("node:child_process");
  const { get, put, close } = await blockFile(block.path);
  try {
    // A writer that died mid-write: its bytes are not taken; the read goes through the server,
    // which repairs the block (a version bump); then it is read directly again.
    const before = await block.read({ length: 3 });
    const dead = spawnSync(process.execPath, ["-e", ""]).pid;
    put(48, dead);
    put(40, get(40) + 1);
    const repaired = await block.read({ length: 3 });
    check(repaired.data.join() === "9,0,1" && repaired.version === before.version + 1 && get(48) === 0 && get(40) % 2 === 0, "a write left half done is repaired, not read", repaired);
    check(block.direct && (await block.read({ length: 1 })).version === before.version + 1, "read directly again", null);
    // Writes in place while reading: every read is one write's bytes, with that write's
    // version (the driver fills the block with the byte version % 251).
    const quiet = (await block.read({ length: 1 })).version;
    await log(`churn ${block.path}`);
    const versions = new Set();
    const deadline = Date.now() + 30000;
    for (let turn = 1, reads = 0; reads < 3000 || versions.size < 20; turn++) {
      const { data, version } = await block.read();
      if (version !== quiet) {
        reads++;
        versions.add(version);
        if (!data.every((b) => b === version % 251)) {
          check(false, "a direct read during writes in place is one write's", { version, data: [...data] });
        }
      }
      if (Date.now() > deadline) check(false, "the driver's writes in place came", { reads, versions: versions.size });
      if (turn % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    await log("churned");
    check(true, "a direct read during writes in place is one write's", versions.size);
    // A Block collected without `close` has its file closed then.
    const v8 = await import("node:v8");
    const vm = await import("node:vm");
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc");
    const opened = () =>
      fs.readdirSync("/proc/self/fd").filter((f) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${f}`) === block.path;
        } catch {
          return false;
        }
      }).length;
    const files = opened();
    await (async () => {
      const dropped = await client.blockAttach(block.pool, block.blockId);
      check(dropped.direct && opened() === files + 1, "a second attachment opens the file", null);
    })();
    for (let turn = 0; opened() > files; turn++) {
      if (turn === 500) check(false, "a Block collected without close has its file closed", opened() - files);
      gc();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    check(true, "a Block collected without close has its file closed", null);
  } finally {
    close();
  }
}

/** Node only: a block's file opened for the test to put words and bytes into, behind the
 * block's back: `get(at)` and `put(at, n)` an 8-byte word, `write(at, bytes)`. */
async function blockFile(path) {
  const fs = await import("node:fs");
  const fd = fs.openSync(path, "r+");
  const word = Buffer.alloc(8);
  return {
    get: (at) => (fs.readSync(fd, word, 0, 8, at), Number(word.readBigUInt64LE(0))),
    put: (at, n) => (word.writeBigUInt64LE(BigInt(n)), fs.writeSync(fd, word, 0, 8, at)),
    write: (at, bytes) => fs.writeSync(fd, bytes, 0, bytes.length, at),
    close: () => fs.closeSync(fd),
  };
}

export async function run(url, log, options = {}) {
  const connect = (u, app, o) =>
    u.includes("{app}") ? open(u.replace("{app}", encodeURIComponent(app)), { ...options, ...o }) : open(u, app, { ...options, ...o });
  const check = (cond, what, detail) => {
    if (!cond) throw new Error(`${what}: ${JSON.stringify(detail)}`);
    log(`ok ${what}`);
  };

  // latzero:// URLs as PROTOCOL.md §12 reads them; what it refuses is refused, before anything
  // is opened. A page has no socket to open: it is told to use the WebSocket port.
  const parsed = parseUrl("latzeros://w1@[::1]:9?fingerprint=" + "ab".repeat(32) + "&pools=a,b&pool=c");
  check(parsed.appId === "w1" && parsed.host === "::1" && parsed.port === 9 && parsed.pools.join() === "a,b,c", "a URL read", parsed);
  for (const bad of ["latzero://a@nohost", "latzero://a@h:1?socket=/s", "latzeros://a", "latzero://a?fingerprint=00",
    "latzero://a?nope=1", "latzeros://a@h:1?ca=/c&fingerprint=" + "0".repeat(64), "latzero://", "http://a"]) {
    const e = await rejects((async () => parseUrl(bad))());
    check(e.code === "INVALID_URL", `refused: ${bad}`, e.message);
  }
  const twice = await rejects(open("latzero://a?pools=demo", { pools: ["x"] }));
  check(twice.code === "INVALID_URL" && twice.message.includes("pools"), "pools given twice", twice.message);
  const appTwice = await rejects(open("latzero://a", "b"));
  check(appTwice.code === "INVALID_URL" && appTwice.message.includes("app id"), "an app id given twice", appTwice.message);
  if (typeof process === "undefined") {
    const inPage = await rejects(open("latzero://a"));
    check(inPage.code === "INVALID_URL" && inPage.message.includes("ws://"), "a page is sent to the WebSocket port", inPage.message);
  }

  const page = await connect(url, "js-page", { pools: ["demo"], ephemeral: true, timeoutMs: 5000, backoffMinMs: 20, backoffMaxMs: 200 });
  const echoed = await page.call("demo", "echo", { x: 21 });
  check(echoed.data?.x === 21 && echoed.app_id === "worker", "call a CLI worker", echoed);

  await page.handle("greet", ({ data, origin }) => `hello ${data} from ${origin}`);
  await page.handle("fail", () => {
    throw new Error("nope");
  });
  await page.handle("slow", () => new Promise(() => {}));
  const other = await connect(url, "js-other", { pools: ["demo"], ephemeral: true, timeoutMs: 5000 });
  check((await other.call("demo", "greet", "ada")) === "hello ada from js-other", "call a JS handler", null);

  const failed = await rejects(other.call("demo", "fail"));
  check(failed instanceof LatZeroError && failed.code === "HANDLER_ERROR" && failed.message.includes("nope"), "a handler's throw", failed.message);
  // HandlerError answers with its value as the error, as it is; one whose value is not JSON is
  // said so, rather than the call waiting out its timeout.
  await page.handle("refuse", ({ data }) => {
    throw new HandlerError(data === "big" ? { n: 1n } : { message: "over the limit", limit: 3 });
  });
  const refusal = await rejects(other.call("demo", "refuse"));
  check(refusal.code === "HANDLER_ERROR" && refusal.error?.limit === 3 && refusal.message.includes("over the limit"), "a HandlerError's value", refusal.error);
  const unsent = await rejects(other.call("demo", "refuse", "big"));
  check(unsent.code === "HANDLER_ERROR" && unsent.message.includes("cannot be sent"), "a HandlerError that is not JSON", unsent.message);
  const none = await rejects(other.call("demo", "nobody-serves-this"));
  check(none.code === "NO_HANDLER", "NO_HANDLER", none.message);

  // Broadcast: every app serving the trigger answers, or fails, in its own entry.
  await page.handle("who", () => "page");
  await other.handle("who", () => {
    throw new Error("nope");
  });
  const replies = (await page.broadcast("demo", "who")).sort((a, b) => a.appId.localeCompare(b.appId));
  check(
    replies.map((r) => r.appId).join() === "js-other,js-page" &&
      replies[0].error?.code === "HANDLER_ERROR" && replies[0].error.message.includes("nope") &&
      replies[1].response === "page",
    "a broadcast",
    replies,
  );
  // Unhandled: no longer served, here or after a reconnect.
  await other.unhandle("who");
  const one = await page.broadcast("demo", "who");
  check(one.length === 1 && one[0].appId === "js-page" && one[0].response === "page", "a trigger unhandled", one);
  await page.unhandle("who");
  check(!page.triggers.has("who"), "and not asked for again", [...page.triggers]);
  const nobody = await rejects(page.broadcast("demo", "who"));
  check(nobody.code === "NO_HANDLER", "a broadcast nobody serves", nobody.message);
  const late = await rejects(other.call("demo", "slow", null, { timeoutMs: 200 }));
  check(late.code === "TIMEOUT" && late.handlerMayStillRun === true, "TIMEOUT", late.message);
  const outside = await rejects(other.call("elsewhere", "echo"));
  check(outside.code === "NOT_IN_POOL", "NOT_IN_POOL", outside.message);
  // A timeout, lease or wait that is not a number of milliseconds above zero is refused before
  // anything is sent: NaN went out as null (the server's 30 s) while the client's own timer
  // fired at once, and a negative lease was taken as 1 ms.
  for (const bad of [0, -1, NaN, Infinity, "500"]) {
    for (const attempt of [
      () => other.call("demo", "echo", 1, { timeoutMs: bad }),
      () => other.broadcast("demo", "echo", 1, { timeoutMs: bad }),
      () => other.blockLock("demo", "nob", { leaseMs: bad }),
    ]) {
      const e = await rejects(attempt());
      check(e.code === "INVALID_OPTIONS", "a timeout that is not above zero is refused", `${String(bad)}: ${e.message}`);
    }
  }
  const negativeWait = await rejects(other.blockLock("demo", "nob", { waitMs: -1 }));
  check(negativeWait.code === "INVALID_OPTIONS", "a negative wait is refused", negativeWait.message);
  // A misspelt event would never fire, and a handler or watch that is not a function would fail
  // at its first event: both are refused where they are given.
  let misspelt;
  try {
    other.on("disconnect", () => {});
  } catch (e) {
    misspelt = e;
  }
  check(misspelt?.code === "INVALID_OPTIONS" && misspelt.message.includes("disconnected"), "an event that does not exist", misspelt?.message);
  for (const attempt of [() => other.handle("nothing", null), () => other.blockWatch("demo", "nob", "not a function")]) {
    const e = await rejects(attempt());
    check(e.code === "INVALID_OPTIONS" && e.message.includes("must be a function"), "a handler that is not a function", e.message);
  }
  check(!other.triggers.has("nothing"), "and not registered", [...other.triggers]);
  check((await other.call("demo", "echo", 1, { timeoutMs: 1000.5 })).data === 1, "a fractional timeout is rounded up", null);
  // Past the server's max_frame_len (16 MiB here), refused unsent: the connection stays up.
  const huge = await rejects(other.call("demo", "echo", "é".repeat(9 << 20)));
  check(huge.code === "FRAME_TOO_LARGE" && huge.message.includes("16777216"), "FRAME_TOO_LARGE, unsent", huge.message);
  check((await other.call("demo", "echo", 1)).data === 1, "still connected after it", null);

  let news;
  const got = new Promise((resolve) => (news = resolve));
  await page.handle("news", ({ data }) => news(data));
  const delivered = await other.emit("demo", "news", { n: 1 });
  check(delivered === 1, "emit receipt", delivered);
  check((await got).n === 1, "emit delivered", null);
  // Fire-and-forget: nothing to wait for but the connection; all delivered, in order. A
  // refusal comes as an event.
  const tallied = [];
  let allTallied;
  const tallyDone = new Promise((resolve) => (allTallied = resolve));
  await page.handle("tally", ({ data }) => {
    tallied.push(data.i);
    if (tallied.length === 5000) allTallied();
  });
  for (let i = 0; i < 5000; i++) {
    const r = await other.emit("demo", "tally", { i, pad: "x".repeat(64) }, { confirm: false });
    if (r !== undefined) throw new Error(`a fire-and-forget emit resolved with ${r}`);
  }
  await tallyDone;
  check(tallied.every((n, i) => n === i), "5000 emits without receipts, in order", tallied.length);
  const refused = once(other, "server_error");
  await other.emit("elsewhere", "tally", 1, { confirm: false });
  check((await refused).code === "NOT_IN_POOL", "a refused emit without a receipt is told", null);

  // Memory blocks, through the server: binary bytes at an offset, and a json document.
  await page.blockCreate("demo", "frame", 16);
  const v = await page.blockWrite("demo", "frame", new Uint8Array([1, 2, 3]), { offset: 2 });
  const part = await other.blockRead("demo", "frame", { offset: 2, length: 3 });
  check(part.data.join() === "1,2,3" && part.version === v, "a binary block written and read", [...part.data]);
  const whole = await other.blockRead("demo", "frame");
  check(whole.data.length === 16 && whole.data[2] === 1 && whole.data[0] === 0, "the whole block", [...whole.data]);
  await page.blockCreate("demo", "cfg", 64, { type: "json" });
  const dv = await page.blockWrite("demo", "cfg", null, { document: { rate: 30 } });
  const doc = await other.blockRead("demo", "cfg");
  check(doc.document?.rate === 30 && doc.version === dv, "a json block", doc);
  const missing = await rejects(other.blockRead("demo", "missing"));
  check(missing.code === "BLOCK_NOT_FOUND", "BLOCK_NOT_FOUND", missing.message);
  // Attached: under Node read from the block's file directly, in a page through the server;
  // the same bytes and versions either way.
  const inNode = typeof process !== "undefined";
  const attached = await other.blockAttach("demo", "frame");
  check(attached.direct === inNode && (inNode || attached.whyNotDirect.includes("page")), "a block attached", attached.whyNotDirect);
  const v2 = await page.blockWrite("demo", "frame", new Uint8Array([9]), { offset: 0 });
  const head = await attached.read({ length: 3 });
  check(head.data.join() === "9,0,1" && head.version === v2, "a write read from the attached block", head);
  const tail = await attached.read({ offset: 13 });
  check(tail.data.join() === "0,0,0" && tail.version === v2, "to its end", tail);
  const past = await rejects(attached.read({ offset: 10, length: 7 }));
  check(past.code === "OUT_OF_RANGE", "a read past its end", past.message);
  const cfgBlock = await other.blockAttach("demo", "cfg");
  const attachedDoc = await cfgBlock.readJson();
  check(cfgBlock.direct === inNode && attachedDoc.document?.rate === 30 && attachedDoc.version === dv, "a json block attached", attachedDoc);
  if (inNode) {
    // A document in the block that is not JSON (put into the file here, its version bumped):
    // refused with INTERNAL, read directly as through the server.
    const file = await blockFile(cfgBlock.path);
    file.write(cfgBlock.headerLen, new TextEncoder().encode("{nope"));
    file.put(56, 5); // used
    file.put(32, file.get(32) + 1); // version
    file.close();
    const direct = await rejects(cfgBlock.readJson());
    const served = await rejects(other.blockRead("demo", "cfg"));
    check(direct.code === "INTERNAL" && served.code === "INTERNAL", "a stored document that is not JSON", [direct.message, served.message]);
    await directReads(other, attached, log, check);
  }
  await page.blockDelete("demo", "frame");
  const deleted = await rejects(attached.read());
  check(deleted.code === "BLOCK_NOT_FOUND", "a deleted block's attachment refuses reads", deleted.message);
  attached.close();
  check(!attached.direct && (await rejects(attached.read())).code === "BLOCK_NOT_FOUND", "a closed one reads through the server", null);
  cfgBlock.close();
  await page.blockDelete("demo", "cfg");

  // Streams: records appended, and a consumer's cursor.
  await page.blockCreate("demo", "log", 4096, { type: "stream" });
  for (const r of ["a", "bb", "ccc"]) await page.blockAppend("demo", "log", new TextEncoder().encode(r));
  const text = (got) => got.records.map((r) => new TextDecoder().decode(r)).join();
  let consumed = await other.blockConsume("demo", "log", "c1", { max: 2 });
  check(text(consumed) === "a,bb" && consumed.nextIndex === 2, "a stream consumed", consumed);
  consumed = await other.blockConsume("demo", "log", "c1", { max: 200000 });
  check(text(consumed) === "ccc" && consumed.skipped === 0, "the consumer's cursor moved (a max past the server's bound reads)", consumed);
  await page.blockDelete("demo", "log");

  // Locks: an exclusive lease keeps another writer out until it is released or runs out.
  await page.blockCreate("demo", "shared", 8);
  const lease = await page.blockLock("demo", "shared");
  check(lease.mode === "exclusive" && lease.renewed === false, "a lock", lease);
  const locked = await rejects(other.blockWrite("demo", "shared", new Uint8Array([1])));
  check(locked.code === "LOCKED", "a write under another's lease is LOCKED", locked.message);
  const second = await rejects(other.blockLock("demo", "shared"));
  check(second.code === "LOCKED", "a second lock is LOCKED", second.message);
  await page.blockUnlock("demo", "shared");
  await other.blockWrite("demo", "shared", new Uint8Array([1]));
  const expired = once(other, "lock_expired", 10000, (d) => d.blockId === "shared");
  await other.blockLock("demo", "shared", { leaseMs: 50 });
  check((await expired).mode === "exclusive", "lock_expired", null);
  await page.blockDelete("demo", "shared");

  // Watches: a persistent block's outlives the restart below; a non-persistent block's ends
  // with it.
  const changes = queue();
  const scratch = queue();
  await page.blockCreate("demo", "state", 64, { type: "json", persistent: true });
  await page.blockWatch("demo", "state", changes.put);
  const first = await changes.until(() => true);
  check(first.event === "synced" && first.version === 0, "a watch synced", first);
  const sv = await other.blockWrite("demo", "state", null, { document: { n: 1 } });
  const ev = await changes.until(() => true);
  check(ev.event === "changed" && ev.version === sv, "a watched change", ev);
  await page.blockCreate("demo", "scratch", 8);
  await page.blockWatch("demo", "scratch", scratch.put);

  // Another connection takes the app id over: the first is told, and does not come back.
  const gone = once(other, "disconnected");
  const taker = await connect(url, "js-other", { pools: ["demo"], ephemeral: true, takeover: true });
  const d = await gone;
  check(d.reconnecting === false && d.reason.includes("DUPLICATE_APP"), "taken over", d);
  // A request after it says why the connection is gone.
  const after = await rejects(other.emit("demo", "nobody-listens"));
  check(
    after.code === "DISCONNECTED" && after.sent === false && after.message.includes("DUPLICATE_APP") && after.message.includes("does not reconnect"),
    "a request after a takeover says why",
    after.message,
  );
  taker.close();

  // The server restarts: the page reconnects with its pools, handlers and presence subscription.
  // The lease it holds ends with the connection, and it is told; the one it released is not.
  await page.blockCreate("demo", "held", 8);
  await page.blockLock("demo", "held", { leaseMs: 60000 });
  await page.blockCreate("demo", "freed", 8);
  await page.blockLock("demo", "freed", { leaseMs: 60000 });
  await page.blockUnlock("demo", "freed");
  const leasesTold = [];
  page.on("lock_expired", (d) => leasesTold.push(d));
  await page.subscribePresence("demo");
  const back = once(page, "reconnected", 20000);
  const lost = once(page, "disconnected", 20000);
  await log("restart"); // the driver stops and starts the server
  check((await lost).reconnecting === true, "disconnected, reconnecting", null);
  const told = leasesTold.map((d) => [d.blockId, d.reason.includes("connection")]);
  check(JSON.stringify(told) === '[["held",true]]', "a lease lost with the connection is told", leasesTold);
  await back;
  await page.emit("demo", "nobody-listens"); // a round trip: the subscription asked again is in
  // (The CLI worker coming back after the restart may be told first.)
  const arrived = once(page, "presence", 10000, (d) => d.appId === "js-again");
  const again = await connect(url, "js-again", { pools: ["demo"], ephemeral: true });
  const p = await arrived;
  check(p.appId === "js-again" && p.joined === true, "presence after the reconnect", p);
  // Unsubscribed: an app joining after that is not told of. (Its join is done when its connect
  // resolves, so a presence event would come before the answer to the round trip after.)
  await page.unsubscribePresence("demo");
  const joins = [];
  page.on("presence", (d) => joins.push(d.appId));
  const joiner = await connect(url, "js-late", { pools: ["demo"], ephemeral: true });
  await page.emit("demo", "nobody-listens"); // a round trip
  check(!joins.includes("js-late"), "no presence after unsubscribing", joins);
  joiner.close();
  check((await again.call("demo", "greet", "bob")) === "hello bob from js-again", "reconnected with its handlers", null);
  const nv = await again.blockWrite("demo", "state", null, { document: { n: 2 } });
  await changes.until((e) => e.event === "changed" && e.version === nv);
  check(true, "the watch resumed after the reconnect", null);
  const end = await scratch.until((e) => e.event !== "synced" && e.event !== "changed");
  check(end.event === "deleted", "a watch whose block went with the server ends", end);
  await page.blockUnwatch("demo", "state");
  await page.blockDelete("demo", "state");
  again.close();
  page.close();
}
