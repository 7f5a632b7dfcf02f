// The JavaScript client's encrypted-pool checks (sealed.mjs) under Node, on the server's Unix
// socket, run by crates/latzero-cli/tests/js.rs; then two of its own against stand-in servers.
// Prints each line (`ok NAME`, `ready`, `restart`) and `done` at the end; a failure prints `FAIL`
// with the reason and exits 1.
//
//   LATZERO_SOCKET=/path/latzero.sock LATZERO_KEYS="lzk1.sigil... lzk1.cipher... lzk1.seal..." \
//     LATZERO_KEYS_TEXT="$(cat vault.keys)" node clients/js/test/encrypted.mjs

import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { connect, PoolKeys } from "../latzero.mjs";
import { run } from "./sealed.mjs";

const socket = process.env.LATZERO_SOCKET;
const KEYS = process.env.LATZERO_KEYS.split(" ");
const options = { timeoutMs: 5000, backoffMinMs: 20, backoffMaxMs: 200 };

/** A stand-in server on a Unix socket beside the real one's: `answer(f, body, send)` for each
 * frame after the handshake (`body`: a binary frame's bytes after its header). */
async function standIn(name, answer) {
  const path = join(dirname(socket), name);
  const server = createServer((sock) => {
    let buf = Buffer.alloc(0);
    const send = (obj) => {
      const b = Buffer.from(JSON.stringify(obj));
      const head = Buffer.alloc(4);
      head.writeUInt32BE(b.length);
      sock.write(Buffer.concat([head, b]));
    };
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        let payload = buf.subarray(4, 4 + buf.readUInt32BE(0));
        buf = buf.subarray(4 + buf.readUInt32BE(0));
        let body;
        if (payload[0] === 0) {
          const n = payload.readUInt32BE(1);
          body = payload.subarray(5 + n);
          payload = payload.subarray(5, 5 + n);
        }
        const f = JSON.parse(payload.toString());
        if (f.action === "handshake") send({ action: "handshake_ack", in_reply_to: f.id, pools: [], triggers: [] });
        else answer(f, body, send);
      }
    });
    sock.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(path, resolve));
  return { server, url: (app) => `latzero://${app}?socket=${path}` };
}

const random32 = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");

async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  return undefined;
}

/** A server that gives a write verifier other than our OblivionSeal's (one that would pass
 * forged records off as the pool's) is not trusted: refused before any proof is sent. */
async function lyingServer() {
  const asked = [];
  const { server, url } = await standIn("lying-js.sock", (f, _body, send) => {
    asked.push(f.action);
    if (f.action === "pool_challenge") {
      send({ action: "pool_challenge", in_reply_to: f.id, pool: "vault", generation: 1, nonce: random32(), write_verifiers: { 1: random32() } });
    } else {
      send({ action: "ack", in_reply_to: f.id });
    }
  });
  try {
    const liar = await connect(url("js-liar"), { reconnect: false });
    const e = await rejection(liar.encryptedPool("vault", KEYS));
    if (e?.code !== "CRYPTO" || !e.message.includes("does not match our OblivionSeal") || asked.join() !== "pool_challenge") {
      throw new Error(`a server's false write verifier: ${e?.stack ?? "joined"}; asked ${asked}`);
    }
    console.log("ok a server's false write verifier is refused before proving");
    liar.close();
  } finally {
    server.close();
  }
}

/** A stream append the server finds sealed before the stream's newest (another writer's landed
 * first) is sealed again and sent again, each time with a later seq, up to 8 tries. */
async function staleAppends() {
  const keys = new PoolKeys("vault", KEYS);
  const verifier = Buffer.from(await keys.writeVerifier(1)).toString("base64");
  const seqs = [];
  const { server, url } = await standIn("stale-js.sock", (f, body, send) => {
    if (f.action === "pool_challenge") {
      send({ action: "pool_challenge", in_reply_to: f.id, pool: "vault", generation: 1, nonce: random32(), write_verifiers: { 1: verifier } });
    } else if (f.action === "block_write") {
      seqs.push(body.readBigUInt64BE(8));
      if (seqs.length === 3) send({ action: "block_written", in_reply_to: f.id, index: 7, version: 8 });
      else send({ action: "error", in_reply_to: f.id, code: "STALE_RECORD", message: "sealed before the stream's newest record" });
    } else {
      send({ action: "ack", in_reply_to: f.id });
    }
  });
  try {
    const c = await connect(url("js-stale"), { reconnect: false });
    const vault = await c.encryptedPool("vault", keys);
    const got = await vault.append("s", new TextEncoder().encode("again"));
    const rising = seqs.every((q, i) => i === 0 || q > seqs[i - 1]);
    if (got.index !== 7 || seqs.length !== 3 || !rising) throw new Error(`an overtaken append: ${JSON.stringify(got)}, ${seqs}`);
    console.log("ok an append overtaken twice is sealed again and lands");
    const e = await rejection(vault.append("s", new TextEncoder().encode("never")));
    if (e?.code !== "STALE_RECORD" || seqs.length !== 3 + 8) throw new Error(`tries: ${seqs.length}, ${e?.stack}`);
    console.log("ok and gives up after 8 tries");
    c.close();
  } finally {
    server.close();
  }
}

try {
  await run((app) => connect(`latzero://${app}?socket=${socket}`, options), async (line) => console.log(line), KEYS, process.env.LATZERO_KEYS_TEXT);
  await lyingServer();
  await staleAppends();
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
