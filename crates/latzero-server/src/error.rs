//! Errors of the server library's public API (start-up and run). Errors on the wire are
//! [`latzero_proto::ErrorCode`]s, produced by the session and the router.

use std::path::PathBuf;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory (or a file in it) could not be created or written.
    #[error("cannot use data directory {}: {source}; check its permissions or pick another with --data-dir", path.display())]
    DataDir {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another server holds the data directory's lock.
    #[error("another latzero server is already running on data directory {}{}; stop it with `latzero stop` or pick another --data-dir", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The data directory.
        path: PathBuf,
        /// The running server's pid, if known.
        pid: Option<u32>,
    },
    /// The TCP address is in use.
    #[error("address {addr} is already in use; is another server running? pick another with --port")]
    AddrInUse {
        /// The address.
        addr: String,
    },
    /// Binding a listener failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Unix sockets' send buffer (`--unix-send-buffer`) cannot be set.
    #[error("cannot give Unix sockets a send buffer of {bytes} bytes (--unix-send-buffer): {source}")]
    SendBuffer {
        /// The size asked for.
        bytes: usize,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The memory-block directories could not be prepared.
    #[error("cannot prepare memory blocks in {}: {source}; check its permissions, or pick another directory with --volatile-memory-dir", path.display())]
    Memory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A restore was refused; nothing was changed.
    #[error("cannot restore {}: {why}", file.display())]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Why.
        why: String,
    },
    /// The TLS settings or certificate are not usable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The authentication settings are not usable.
    #[error("invalid authentication settings: {0}")]
    Auth(String),
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
}
