//! The LatZero Rust SDK.
//!
//! ```no_run
//! use latzero_client::{Client, HandlerError, Request};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), latzero_client::ClientError> {
//! // A handler app.
//! let worker = Client::connect("latzero://worker?pools=alpha").await?;
//! worker
//!     .handle("double", |req: Request| async move {
//!         let x = req.data["x"].as_i64().ok_or_else(|| HandlerError::msg("x must be a number"))?;
//!         Ok(json!({ "result": x * 2 }))
//!     })
//!     .await?;
//!
//! // A caller app.
//! let caller = Client::connect("latzero://caller?pools=alpha").await?;
//! let out = caller.call("alpha", "double", &json!({ "x": 42 })).await?;
//! assert_eq!(out["result"], 84);
//! # Ok(()) }
//! ```
//!
//! - [`Client::connect`] takes a `latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]` URL;
//!   without host or socket it prefers the local Unix socket (faster) and falls back to TCP.
//! - Calls: [`Client::call`], [`Client::call_to`], and [`Client::request`] for timeouts,
//!   broadcast and third-party reply. A call to a trigger this client registered itself, in a
//!   pool it is in, runs in-process without a network round trip.
//! - Payloads as JSON text ([`Payload`]): [`Client::call_raw`], [`Call::send_raw`] and
//!   [`Client::handle_raw`] never parse a payload into a [`serde_json::Value`]; a received one
//!   is a view into its frame. A handler's [`Request`] names are [`CompactString`]s (re-exported
//!   from the `compact_str` crate), inline up to 24 bytes.
//! - Memory blocks: [`Client::create_block`] and [`Client::attach_block`] give a
//!   [`MemoryBlock`], mapped in this process when the server is on this machine (reads and writes
//!   touch shared memory directly), with versions, locks and [`MemoryBlock::watch`].
//! - The connection reconnects with exponential backoff and jitter, handshakes again with its
//!   pools and triggers, and reports it through [`Client::events`]. Calls in flight when the
//!   connection drops fail at once with [`ClientError::Disconnected`].

pub mod admin;
mod call;
mod client;
mod connection;
mod driver;
mod encrypted;
mod error;
mod handler;
mod memory;
mod options;
mod payload;
mod pending;
mod tls;

pub use call::{BroadcastReply, Call};
pub use client::{Client, ClientEvent, Forwarded, PoolSpec};
pub use compact_str::CompactString;
pub use encrypted::{EncryptedPool, OpenedRecords};
pub use error::{ClientError, RemoteError};
pub use handler::{HandlerError, Request};
pub use latzero_crypto::{KeyError, PoolKeys, SealError, Verifiers, generate as generate_pool_keys};
pub use latzero_proto::{AppId, ErrorCode, LatzeroUrl, PoolName, TlsVerify, TriggerName, parse_fingerprint};
pub use memory::{Access, BlockEvent, BlockOptions, BlockWatch, LockGrant, MemoryBlock, Records};
pub use options::{ClientOptions, DEFAULT_CLOSE_GRACE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SPIN};
pub use payload::Payload;
