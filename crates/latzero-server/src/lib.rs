//! The LatZero orchestrator, as a library so that tests and benches can embed it.
//!
//! ```text
//! server.rs      bind listeners, shared State, graceful shutdown
//! transport.rs   TCP and Unix-socket accept loops
//! tls.rs         TLS on the TCP port (certificate, the session's TLS reader and writer)
//! ws.rs          the WebSocket port (browsers): upgrade, origin check, messages as frames
//! session/       one connection: reader loop (mod.rs), outbound queue + writer (conn.rs)
//! directory.rs   connected apps and the pools (members, trigger index)
//! registry.rs    the durable app registry: write-through to the store, rehydration
//! pools.rs       pool management: create/update/remove (stored, owners only), listings
//! security.rs    authentication: static tokens (hashed) and JWTs (HS256, EdDSA)
//! router/        triggers and emits: dispatch, correlation, deadlines (pending.rs)
//! memory/        memory blocks: registry and files (mod.rs), actions (ops.rs), leases (locks.rs)
//! store/         SQLite (data.db) on its own thread: schema and migrations, records, backups
//! backup.rs      scheduled and on-demand backups with rotation; restore
//! admin.rs       counters and the status snapshot
//! datadir.rs     data-directory layout, lock file, server.json
//! config.rs      configuration and limits
//! ```
//!
//! Clustering arrives in a later release.
//!
//! ```no_run
//! # async fn demo() -> Result<(), latzero_server::ServerError> {
//! let server = latzero_server::Server::bind(latzero_server::ServerConfig::new("/tmp/lz")).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admin;
mod backup;
mod config;
mod datadir;
mod directory;
mod error;
mod health;
mod memory;
mod metrics;
mod pools;
mod registry;
mod router;
mod sealed;
mod security;
mod server;
mod session;
pub mod store;
mod tls;
mod transport;
mod ws;

pub use backup::{Restored, list as list_backups, restore};
pub use config::{
    DEFAULT_SPIN, DEFAULT_UNIX_SEND_BUFFER, Limits, MAX_SPIN, MAX_UNIX_SEND_BUFFER, MIN_FRAME_LEN, ServerConfig,
};
pub use datadir::{LOCK_FILE, RUNTIME_FILE, RuntimeInfo, SUBDIRS};
pub use error::ServerError;
pub use memory::MemoryConfig;
pub use security::{AuthConfig, token_sha256};
pub use server::Server;
pub use store::StoreConfig;
pub use tls::{GENERATED_CERT, GENERATED_KEY, TlsConfig};
pub use ws::WsConfig;
