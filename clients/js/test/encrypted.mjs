// The JavaScript client's encrypted-pool checks (sealed.mjs) under Node, on the server's Unix
// socket, run by crates/latzero-cli/tests/js.rs; then one of its own against a stand-in server.
// Prints each line (`ok NAME`, `ready`, `restart`) and `done` at the end; a failure prints `FAIL`
// with the reason and exits 1.
//
//   LATZERO_SOCKET=/path/latzero.sock LATZERO_KEYS="lzk1.sigil... lzk1.cipher... lzk1.seal..." \
//     LATZERO_KEYS_TEXT="$(cat vault.keys)" node clients/js/test/encrypted.mjs

import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { connect } from "../latzero.mjs";
import { run } from "./sealed.mjs";

const socket = process.env.LATZERO_SOCKET;
const KEYS = process.env.LATZERO_KEYS.split(" ");
const options = { timeoutMs: 5000, backoffMinMs: 20, backoffMaxMs: 200 };

/** A server that gives a write verifier other than our OblivionSeal's (one that would pass
 * forged records off as the pool's) is not trusted: refused before any proof is sent. */
async function lyingServer() {
  const asked = [];
  const path = join(dirname(socket), "lying-js.sock");
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
        const f = JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString());
        buf = buf.subarray(4 + buf.readUInt32BE(0));
        if (f.action === "handshake") {
          send({ action: "handshake_ack", in_reply_to: f.id, pools: [], triggers: [] });
          continue;
        }
        asked.push(f.action);
        if (f.action === "pool_challenge") {
          const random = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
          send({ action: "pool_challenge", in_reply_to: f.id, pool: "vault", generation: 1, nonce: random(), write_verifiers: { 1: random() } });
        } else {
          send({ action: "ack", in_reply_to: f.id });
        }
      }
    });
    sock.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(path, resolve));
  try {
    const liar = await connect(`latzero://js-liar?socket=${path}`, { reconnect: false });
    let e;
    try {
      await liar.encryptedPool("vault", KEYS);
    } catch (err) {
      e = err;
    }
    if (e?.code !== "CRYPTO" || !e.message.includes("does not match our OblivionSeal") || asked.join() !== "pool_challenge") {
      throw new Error(`a server's false write verifier: ${e?.stack ?? "joined"}; asked ${asked}`);
    }
    console.log("ok a server's false write verifier is refused before proving");
    liar.close();
  } finally {
    server.close();
  }
}

try {
  await run((app) => connect(`latzero://${app}?socket=${socket}`, options), async (line) => console.log(line), KEYS, process.env.LATZERO_KEYS_TEXT);
  await lyingServer();
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
