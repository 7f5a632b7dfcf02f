//! Example programs, each run against a running server (`cargo run -p latzero-cli --release --
//! start`):
//!
//! - `handler` and `caller`: RPC — a handler serving "double" in pool "demo", a caller calling it
//!   (`cargo run -p latzero-examples --bin handler`, then `--bin caller`);
//! - `memory`: a memory block written by one app through its mapping and read by another
//!   through its own, with watch notices (`--bin memory`);
//! - `encrypted`: an encrypted pool whose calls the server routes as ciphertext
//!   (`--bin encrypted`).
//!
//! `tests/examples.rs` runs them all, as separate processes.
