// End-to-end test of clients/js/latzero.mjs under Node against a real server, run by
// crates/latzero-cli/tests/js.rs, which starts `latzero start` and a `latzero reply` worker
// serving `echo` in pool `demo`, and restarts the server when this prints `restart`. The URL is
// the server's WebSocket port (`latzero start --ws-port P`), or a `latzero://{app}...` URL for
// its Unix socket or TCP port (checks.mjs fills in `{app}`).
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

try {
  // Imported here, so that a module that fails to load is reported too.
  const { run } = await import("./checks.mjs");
  await run(url, (line) => console.log(line), options);
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
