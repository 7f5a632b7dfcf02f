// The JavaScript client's encrypted-pool checks (sealed.mjs) under Node, on the server's Unix
// socket, run by crates/latzero-cli/tests/js.rs. Prints each line (`ok NAME`, `ready`,
// `restart`) and `done` at the end; a failure prints `FAIL` with the reason and exits 1.
//
//   LATZERO_SOCKET=/path/latzero.sock LATZERO_KEYS="lzk1.sigil... lzk1.cipher... lzk1.seal..." \
//     node clients/js/test/encrypted.mjs

import { connect } from "../latzero.mjs";
import { run } from "./sealed.mjs";

const socket = process.env.LATZERO_SOCKET;
const options = { timeoutMs: 5000, backoffMinMs: 20, backoffMaxMs: 200 };
try {
  await run((app) => connect(`latzero://${app}?socket=${socket}`, options), async (line) => console.log(line), process.env.LATZERO_KEYS.split(" "), process.env.LATZERO_KEYS_TEXT);
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
