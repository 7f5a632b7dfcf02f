//! The data directory: its layout, the lock that keeps a second server out, and `server.json`,
//! which tells local tools (`latzero status`, `latzero stop`) where the running server listens.

use std::fs::{self, File};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// Sub-directories created in every data directory.
pub const SUBDIRS: [&str; 4] = ["backups", "memory", "logs", "config"];
/// The lock file's name.
pub const LOCK_FILE: &str = "latzero.lock";
/// The runtime file's name.
pub const RUNTIME_FILE: &str = "server.json";

/// What `server.json` holds while a server runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The server's process id.
    pub pid: u32,
    /// The bound TCP address.
    pub tcp: SocketAddr,
    /// The Unix socket path, if enabled.
    pub unix: Option<PathBuf>,
    /// The server's version.
    pub version: String,
    /// With TLS: the SHA-256 fingerprint of the TCP port's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// The WebSocket port's address, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<SocketAddr>,
    /// The metrics port's address, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// The server's `max_frame_len`: the longest answer it may send, which the command-line
    /// tools then read. Absent in a file written before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_len: Option<usize>,
}

impl RuntimeInfo {
    /// Reads `server.json` from a data directory.
    pub fn read(data_dir: &Path) -> std::io::Result<RuntimeInfo> {
        let text = fs::read_to_string(data_dir.join(RUNTIME_FILE))?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

/// Writes a file atomically: into `<path>.tmp` created with `mode`, synced, then renamed over
/// `path`, so a reader (or a crash) never sees half of it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|error| ServerError::DataDir {
        path: path.to_path_buf(),
        error,
    })
}

/// A prepared, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    lock: File,
}

impl DataDir {
    /// Creates the directory tree and takes the lock.
    pub fn prepare(path: &Path) -> Result<DataDir, ServerError> {
        let unwritable = |what: &Path, e: std::io::Error| ServerError::DataDir {
            path: what.to_path_buf(),
            error: e,
        };
        // Owner-only, as ~/.ssh is: the registry, the logs, the backups and the persistent
        // blocks are protected by file permissions alone (docs/SECURITY.md), and a directory
        // others cannot enter protects them whatever mode each file was made with.
        let private = || {
            let mut b = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(b.recursive(true), 0o700);
            b
        };
        private().create(path).map_err(|e| unwritable(path, e))?;
        for sub in SUBDIRS {
            let p = path.join(sub);
            private().create(&p).map_err(|e| unwritable(&p, e))?;
        }
        if let Ok(m) = fs::metadata(path) {
            let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %path.display(),
                    "the data directory is open to other users (mode {mode:o}); its registry, logs, backups and persistent blocks are protected by file permissions only: chmod 700 it"
                );
            }
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unwritable(&lock_path, e))?;
        match FileExt::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                let pid = RuntimeInfo::read(path).ok().map(|i| i.pid);
                return Err(ServerError::AlreadyRunning {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            Err(e) => return Err(unwritable(&lock_path, e)),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `server.json` atomically (write then rename).
    pub fn write_runtime(&self, info: &RuntimeInfo) -> Result<(), ServerError> {
        let text = serde_json::to_string_pretty(info).map_err(|e| ServerError::DataDir {
            path: self.path.join(RUNTIME_FILE),
            error: std::io::Error::other(e),
        })?;
        write_atomic(&self.path.join(RUNTIME_FILE), text.as_bytes(), 0o644)
    }

    /// Removes `server.json` on a clean exit.
    pub fn clear_runtime(&self) {
        let _ = fs::remove_file(self.path.join(RUNTIME_FILE));
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_layout_and_refuses_a_second_lock() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::prepare(t.path()).unwrap();
        for sub in SUBDIRS {
            assert!(t.path().join(sub).is_dir());
        }
        let err = DataDir::prepare(t.path()).unwrap_err();
        assert!(matches!(err, ServerError::AlreadyRunning { .. }), "{err}");
        drop(d);
        DataDir::prepare(t.path()).unwrap();
    }

    /// A data directory it creates is the owner's alone, its subdirectories too.
    #[test]
    fn a_new_data_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("new/data");
        let _d = DataDir::prepare(&dir).unwrap();
        for p in std::iter::once(dir.clone()).chain(SUBDIRS.iter().map(|s| dir.join(s))) {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = DataDir::prepare(&file.join("sub")).unwrap_err();
        assert!(err.to_string().contains("cannot use data directory"), "{err}");
    }
}
