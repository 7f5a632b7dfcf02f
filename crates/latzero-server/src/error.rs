//! Errors of the server library's public API (start-up and run). Errors on the wire are
//! [`latzero_proto::ErrorCode`]s, produced by the session and the router.

use std::path::PathBuf;

/// Why the server could not start or run.
///
/// Each message tells its cause itself, so no variant also hands the cause on as
/// [`source`](std::error::Error::source): a report that walks the chain (`anyhow`'s `{:#}`, as
/// `latzero start` prints) would tell it twice.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory (or a file in it) could not be created or written.
    #[error("cannot use data directory {}: {error}; check its permissions or pick another with --data-dir", path.display())]
    DataDir {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
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
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The Unix socket's path (in the data directory) is longer than a socket address takes.
    #[error("cannot listen on {}: a Unix socket's path may have at most {max} bytes here, and this one has {len}; pick a shorter --data-dir, or serve TCP only with --no-unix-socket", path.display())]
    SocketPathTooLong {
        /// The socket's path.
        path: PathBuf,
        /// Its length, bytes.
        len: usize,
        /// The longest a socket path may be, bytes.
        max: usize,
    },
    /// The Unix sockets' send buffer (`--unix-send-buffer`) cannot be set.
    #[error("cannot give Unix sockets a send buffer of {bytes} bytes (--unix-send-buffer): {error}")]
    SendBuffer {
        /// The size asked for.
        bytes: usize,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The memory-block directories could not be prepared.
    #[error("cannot prepare memory blocks in {}: {error}; check its permissions, or pick another directory with --volatile-memory-dir", path.display())]
    Memory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A restore was refused; nothing was changed.
    #[error("cannot restore {}: {why}", file.display())]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Why.
        why: String,
    },
    /// A setting of [`ServerConfig`](crate::ServerConfig) is out of range
    /// ([`ServerConfig::check`](crate::ServerConfig::check)).
    #[error("invalid server configuration: {setting} {why}")]
    Config {
        /// The setting, as its path in `ServerConfig` (`limits.max_ttl`).
        setting: &'static str,
        /// What is wrong with it.
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
    Store(crate::store::StoreError),
    /// The database file is damaged; nothing was changed.
    #[error(
        "the database {} is damaged ({why}); the server does not start on it. Put a backup in its place with `latzero restore FILE`{}, or move it aside to start with an empty registry",
        path.display(),
        newest_backup.as_ref().map(|b| format!(" (the newest: {})", b.display())).unwrap_or_else(|| " (there is none in backups/)".into())
    )]
    DamagedStore {
        /// The database file.
        path: PathBuf,
        /// What SQLite found.
        why: String,
        /// The newest backup in `<data_dir>/backups/`, if any.
        newest_backup: Option<PathBuf>,
    },
}

impl From<crate::store::StoreError> for ServerError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Damaged { path, why } => {
                let backups = path.parent().map(|d| d.join("backups")).unwrap_or_default();
                ServerError::DamagedStore {
                    path,
                    why,
                    newest_backup: crate::backup::list(&backups).pop(),
                }
            }
            e => ServerError::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::store::StoreError;

    /// A damaged database's error says how to recover, naming the newest backup if any.
    #[test]
    fn a_damaged_database_names_the_newest_backup() {
        let dir = tempfile::tempdir().unwrap();
        let damaged = || StoreError::Damaged {
            path: dir.path().join("data.db"),
            why: "database disk image is malformed".into(),
        };
        let told = ServerError::from(damaged()).to_string();
        assert!(
            told.contains("is damaged (database disk image is malformed)")
                && told.contains("latzero restore FILE` (there is none in backups/)")
                && told.contains("move it aside"),
            "{told}"
        );
        std::fs::create_dir(dir.path().join("backups")).unwrap();
        for name in [
            "latzero-20261101-000000-000-000.db",
            "latzero-20261102-000000-000-000.db",
        ] {
            std::fs::write(dir.path().join("backups").join(name), b"").unwrap();
        }
        let newest = dir.path().join("backups/latzero-20261102-000000-000-000.db");
        let told = ServerError::from(damaged()).to_string();
        assert!(told.contains(&format!("(the newest: {})", newest.display())), "{told}");
    }

    /// An error with a cause tells it in its message and does not hand it on as its source, so
    /// a report that walks the chain (`latzero start` prints `anyhow`'s `{:#}`) tells it once.
    #[test]
    fn each_cause_is_told_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let told = io().to_string();
        let sqlite = || rusqlite::Error::InvalidQuery;
        let store = StoreError::from(sqlite());
        let errors = [
            (
                told.clone(),
                ServerError::DataDir {
                    path: "/d".into(),
                    error: io(),
                },
            ),
            (
                told.clone(),
                ServerError::Bind {
                    addr: "a".into(),
                    error: io(),
                },
            ),
            (told.clone(), ServerError::SendBuffer { bytes: 1, error: io() }),
            (
                told,
                ServerError::Memory {
                    path: "/m".into(),
                    error: io(),
                },
            ),
            (store.to_string(), store.into()),
            (
                sqlite().to_string(),
                StoreError::Open {
                    path: "/db".into(),
                    error: sqlite(),
                }
                .into(),
            ),
        ];
        for (cause, e) in errors {
            assert!(e.to_string().contains(&cause), "{e} does not tell {cause}");
            assert!(e.source().is_none(), "{e} hands its cause on as well");
        }
    }
}
