//! Example programs; see `handler.rs` and `caller.rs`. Run them with
//! `cargo run -p latzero-examples --example handler` and `--example caller`.
