// End-to-end test of clients/js/latzero.mjs under Node against a real server, run by
// crates/latzero-cli/tests/js.rs, which starts `latzero start --ws-port P` and a `latzero reply`
// worker serving `echo` in pool `demo`, and restarts the server when this prints `restart`.
// Prints `ok NAME` per check (checks.mjs) and `done` at the end; a failure prints `FAIL` with
// the reason and exits 1.
//
//   LATZERO_WS=ws://127.0.0.1:P node clients/js/test/e2e.mjs

const options = {};
if (typeof globalThis.WebSocket !== "function") {
  // Node before 22 without --experimental-websocket: the ws package, if scripts/test.sh got it.
  options.WebSocket = (await import(process.env.LATZERO_JS_WS)).default;
}

try {
  // Imported here, so that a module that fails to load is reported too.
  const { run } = await import("./checks.mjs");
  await run(process.env.LATZERO_WS, (line) => console.log(line), options);
  console.log("done");
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  process.exit(1);
}
