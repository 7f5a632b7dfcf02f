// The JavaScript client's encrypted-pool checks, against a real server and a Rust SDK app in the
// same pool: run under Node by encrypted.mjs (crates/latzero-cli/tests/js.rs) and in a page of
// headless Chromium by browser.html (browser.rs). The test makes the pool with `latzero keys
// generate vault`, and its Rust app (`rs-worker`, crates/latzero-cli/tests/sealed/mod.rs) serves
// `rs_upper`, has sealed a document into block `rs-doc` and two records into stream `rs-log`.
// When this says `ready` the Rust app checks what this sealed and calls `peer_done`; when it says
// `restart` the test restarts the server. Each check says `ok NAME`; a failure throws.

import { Block, HandlerError, LatZeroError, PoolKeys } from "../latzero.mjs";

const utf8 = new TextEncoder();
const text = (b) => new TextDecoder().decode(b);

/** Whether two JSON values are equal, whatever the order of their keys. */
function sameJson(a, b) {
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return a === b;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && sameJson(a[k], b[k]));
}

/** Runs the checks: `open(app)` connects as `app` (by a `latzero://` URL under Node, to the
 * WebSocket port in a page), `say(line)` reports a line and resolves once the test has handled
 * it, `KEYS` are the pool's key texts, `printed` the keys as `latzero keys generate` printed
 * them. */
export async function run(open, say, KEYS, printed) {
  const check = async (cond, what, detail) => {
    if (!cond) throw new Error(`${what}: ${JSON.stringify(detail)}`);
    await say(`ok ${what}`);
  };

  const rejects = async (promise) => {
    try {
      await promise;
    } catch (e) {
      if (e instanceof LatZeroError) return e;
      throw e;
    }
    throw new Error("expected a LatZeroError");
  };

  const js = await open("js-app");
  // The keys as `latzero keys generate` printed them, as a keys file holds them.
  const fromText = PoolKeys.fromText("vault", printed);
  await check(sameJson(fromText.toJSON(), new PoolKeys("vault", KEYS).toJSON()), "a keys file's text reads", fromText);
  // A keys file: read under Node; a page reads no files, and is told so.
  if (typeof process !== "undefined" && process.versions?.node !== undefined) {
    const [{ mkdtemp, writeFile, rm }, { tmpdir }, { join }] = await Promise.all([import("node:fs/promises"), import("node:os"), import("node:path")]);
    const dir = await mkdtemp(join(tmpdir(), "latzero-keys-"));
    try {
      await writeFile(join(dir, "vault.keys"), printed, { mode: 0o600 });
      const fromFile = await PoolKeys.fromFile("vault", join(dir, "vault.keys"));
      await check(sameJson(fromFile.toJSON(), fromText.toJSON()), "a keys file reads", fromFile);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  } else {
    const e = await rejects(PoolKeys.fromFile("vault", "vault.keys"));
    await check(e.code === "NOT_AVAILABLE", "a page is told it reads no keys file", e.message);
  }
  const vault = await js.encryptedPool("vault", fromText);
  await check(!js.pools.has("vault"), "joined by proving the SigilKey, not by a handshake", [...js.pools]);

  // JavaScript seals, Rust opens and answers sealed, JavaScript opens.
  const got = await vault.call("rs_upper", { text: "héllo" });
  await check(sameJson(got, { upper: "HÉLLO", by: "rust" }), "a Rust handler answers a sealed call", got);
  let e = await rejects(vault.call("rs_upper", { fail: true }));
  await check(e.code === "HANDLER_ERROR" && sameJson(e.error, { message: "account 7 is short by 1200" }), "a Rust handler's sealed error opens", e.error);
  // On the wire the error is a sealed record: the server never saw its text.
  const raw = await rejects(js.call("vault", "rs_upper", await vault._sealValue("msg/rs_upper", { fail: true })));
  await check(Object.keys(raw.error).join() === "sealed" && !JSON.stringify(raw.error).includes("1200"), "the error crossed the server sealed", raw.error);
  e = await rejects(js.call("vault", "rs_upper", { text: "plain" }));
  await check(e.code === "PERMISSION_DENIED", "the server refuses a plaintext call", e.message);
  // A sealed broadcast: the Rust handler's answer, and its sealed error, opened.
  let replies = await vault.broadcast("rs_upper", { text: "ok" });
  await check(sameJson(replies, [{ appId: "rs-worker", response: { upper: "OK", by: "rust" } }]), "a sealed broadcast's answer opens", replies);
  replies = await vault.broadcast("rs_upper", { fail: true });
  const be = replies.length === 1 ? replies[0].error : undefined;
  await check(be instanceof LatZeroError && be.code === "HANDLER_ERROR" && sameJson(be.error, { message: "account 7 is short by 1200" }), "a sealed broadcast's error opens", replies);

  const { document } = await vault.readJson("rs-doc");
  await check(sameJson(document, { from: "rust", n: 1 }), "reads a document Rust sealed", document);
  // Given a Block instead of an id: under Node read from the block's file directly (the
  // client's reads through the server are taken away meanwhile), in a page through the server.
  const inNode = Boolean(globalThis.process?.versions?.node);
  const docBlock = await js.blockAttach("vault", "rs-doc");
  await check(docBlock.direct === inNode, "a sealed block attached", docBlock.whyNotDirect);
  const throughServer = js.blockRead;
  if (inNode) js.blockRead = () => Promise.reject(new Error("read through the server"));
  try {
    const direct = await vault.readJson(docBlock);
    await check(sameJson(direct.document, { from: "rust", n: 1 }), "reads it through an attached Block", direct);
  } finally {
    js.blockRead = throughServer;
  }
  e = await rejects(vault.readBlock(new Block(js, { block: { pool: "other", block_id: "rs-doc" } }, null, "a test's")));
  await check(e.code === "INVALID_OPTIONS" && e.message.includes("other/rs-doc"), "a Block of another pool is refused", e.message);
  docBlock.close();
  const r = await vault.consume("rs-log", "js");
  await check(sameJson(r.records.map(text), ["rust 0", "rust 1"]), "opens stream records Rust sealed", r.records.map(String));

  // What the Rust app checks at `ready`.
  let finish;
  const done = new Promise((resolve) => (finish = resolve));
  const notes = [];
  await vault.handle("peer_sum", async (req) => {
    if (req.data.xs.length === 0) throw new HandlerError({ message: "nothing to add", code: 42 });
    return { sum: req.data.xs.reduce((a, b) => a + b, 0), by: "javascript", from: req.origin };
  });
  await vault.handle("peer_note", (req) => notes.push(req.data));
  await vault.handle("peer_done", (req) => finish(req.data));
  await js.blockCreate("vault", "peer-doc", 1024);
  await vault.writeJson("peer-doc", { from: "javascript", list: [1, 2] });
  const { index } = await vault.append("rs-log", utf8.encode("javascript 0"));
  await check(index === 2, "appends a sealed record after Rust's", index);

  // Keys: a reader reads and cannot write; a wrong SigilKey cannot join; bad text is named,
  // never echoed.
  const readerClient = await open("js-reader");
  const reader = await readerClient.encryptedPool("vault", new PoolKeys("vault", KEYS.slice(0, 2)));
  const read = await reader.readJson("peer-doc");
  await check(sameJson(read.document, { from: "javascript", list: [1, 2] }), "a reader with the CipherShard reads", read);
  e = await rejects(reader.call("rs_upper", { text: "x" }));
  await check(e.code === "CRYPTO" && e.message.includes("OblivionSeal"), "a reader cannot seal", e.message);
  e = await rejects(reader.writeJson("peer-doc", { forged: true }));
  await check(e.code === "CRYPTO", "nor write a block", e.message);
  const random = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))).replaceAll("+", "-").replaceAll("/", "_").slice(0, 43);
  const stranger = await open("js-stranger");
  e = await rejects(stranger.encryptedPool("vault", [`lzk1.sigil.1.${random}`, ...KEYS.slice(1)]));
  await check(e.code === "PERMISSION_DENIED", "a wrong SigilKey does not join", e.message);
  const secret = KEYS[0].split(".")[3];
  for (const t of [`${KEYS[0]}.`, `${KEYS[0]} ${KEYS[1]}`, `${KEYS[0].slice(0, -1)}!`]) {
    e = await rejects(stranger.encryptedPool("vault", [t]));
    await check(e.code === "INVALID_OPTIONS" && !e.message.includes(secret) && e.message.includes("<redacted>"), `bad key text ${t.length} is refused without the key`, e.message);
  }
  e = await rejects(stranger.encryptedPool("vault", new PoolKeys("other", KEYS)));
  await check(e.code === "INVALID_OPTIONS", "keys of another pool are refused", e.message);
  const keys = new PoolKeys("vault", KEYS);
  // Under Node, console.log's inspection too.
  const inspect = globalThis.process?.versions?.node ? (await import("node:util")).inspect : () => "";
  const shown = JSON.stringify(keys) + String(keys) + inspect(keys, { showHidden: true, depth: 5 });
  await check(!shown.includes(secret) && shown.includes("OblivionSeal"), "neither JSON nor console.log shows a key", shown);
  // Written through the server unsealed, or sealed and altered: refused there.
  e = await rejects(js.blockWrite("vault", "peer-doc", Uint8Array.of(0, 0, 0, 5, 104, 101, 108, 108, 111)));
  await check(e.code === "PERMISSION_DENIED", "the server refuses an unsealed block write", e.message);
  // A message a reader opened once is not taken again (a replayed message).
  const msg = await vault._sealValue("msg/x", 1);
  await vault._openMessage("msg/x", msg);
  e = await rejects(vault._openMessage("msg/x", msg));
  await check(e.code === "CRYPTO" && e.message.includes("already delivered"), "a message opens once", e.message);

  await say("ready");
  const checked = await done;
  await check(sameJson(checked, { checked: 5 }), "the Rust app opened what JavaScript sealed", checked);
  await check(sameJson(notes, [{ note: "from rust" }]), "an emit from Rust opens", notes);

  // After a restart the handle proves the key again before its next operation.
  const reconnected = new Promise((resolve) => js.on("reconnected", resolve));
  await say("restart");
  await reconnected;
  const again = await vault.readJson("rs-doc");
  await check(sameJson(again.document, { from: "rust", n: 1 }), "re-joined after the server restarted", again);

  for (const c of [js, readerClient, stranger]) c.close();
}
