//! Server configuration and its limits. Every limit is explicit, has a documented default, and
//! hitting it is an error the user sees (docs/PROTOCOL.md, "Limits").

use std::path::PathBuf;
use std::time::Duration;

use latzero_proto::{DEFAULT_HOST, DEFAULT_MAX_FRAME_LEN, DEFAULT_PORT};

/// Limits that protect the server and its peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest frame payload accepted, in bytes (FRAME_TOO_LARGE beyond it).
    pub max_frame_len: usize,
    /// Frames queued to one connection before it counts as a slow consumer.
    pub outbound_queue_frames: usize,
    /// Bytes queued to one connection before it counts as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Calls one connection may have in flight (OVERLOADED beyond it).
    pub max_inflight_per_conn: usize,
    /// Deadline of a call that gives no `ttl`.
    pub default_ttl: Duration,
    /// Largest `ttl` accepted.
    pub max_ttl: Duration,
    /// Connections served at once; one more is told OVERLOADED and closed.
    pub max_connections: usize,
    /// How long a connection may stay without a handshake (admin requests included).
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            // The byte bound is the one that protects memory (NATS's max_pending is 64 MB too);
            // the frame bound only caps per-frame overhead for floods of tiny frames.
            outbound_queue_frames: 1 << 20,
            outbound_queue_bytes: 64 * 1024 * 1024,
            max_inflight_per_conn: 65_536,
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            max_connections: 65_536,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The default of [`ServerConfig::spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest [`ServerConfig::spin`] that takes effect (longer is cut to it).
pub const MAX_SPIN: Duration = latzero_uds::spin::MAX_WINDOW;

/// The default of [`ServerConfig::unix_send_buffer`] (4 MiB).
pub const DEFAULT_UNIX_SEND_BUFFER: usize = latzero_uds::DEFAULT_SEND_BUFFER;

/// The largest [`ServerConfig::unix_send_buffer`] a socket takes.
pub const MAX_UNIX_SEND_BUFFER: usize = latzero_uds::MAX_SEND_BUFFER;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP host to bind.
    pub host: String,
    /// TCP port to bind; 0 picks a free one.
    pub port: u16,
    /// The data directory (created with backups/, memory/, logs/, config/).
    pub data_dir: PathBuf,
    /// Also listen on `<data_dir>/latzero.sock`.
    pub unix_socket: bool,
    /// Limits.
    pub limits: Limits,
    /// Memory blocks: where they live, their limits, lock leases.
    pub memory: crate::memory::MemoryConfig,
    /// The durable store (data.db).
    pub store: crate::store::StoreConfig,
    /// Who may connect.
    pub auth: crate::security::AuthConfig,
    /// TLS on the TCP port.
    pub tls: crate::tls::TlsConfig,
    /// How long a graceful shutdown waits for connections to flush.
    pub shutdown_grace: Duration,
    /// How long the server keeps polling its sockets after a message before it sleeps; zero
    /// turns it off. See `latzero_uds::spin` for what it buys and costs.
    pub spin: Duration,
    /// The send buffer asked for on each Unix socket the server writes to (its Unix clients',
    /// and the inner socket of each TLS connection), bytes; zero leaves the kernel's default.
    /// Linux cuts it to `net.core.wmem_max` (the server warns at start). See
    /// [`latzero_uds::DEFAULT_SEND_BUFFER`] for why 4 MiB.
    pub unix_send_buffer: usize,
}

impl ServerConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            data_dir: data_dir.into(),
            unix_socket: true,
            limits: Limits::default(),
            memory: crate::memory::MemoryConfig::default(),
            store: crate::store::StoreConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            auth: crate::security::AuthConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            spin: DEFAULT_SPIN,
            unix_send_buffer: DEFAULT_UNIX_SEND_BUFFER,
        }
    }
}
