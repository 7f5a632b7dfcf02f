//! Layered configuration for `latzero start`: CLI > `LATZERO_*` env (both via clap) > the config
//! file `<data_dir>/config/latzero.toml` > defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use latzero_server::ServerConfig;
use serde::Deserialize;

use crate::cli::StartArgs;

/// The config file's name inside `<data_dir>/config/`.
pub const CONFIG_FILE: &str = "latzero.toml";

/// `config/latzero.toml`. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub log_level: Option<String>,
    pub log_max_bytes: Option<usize>,
    pub log_files: Option<usize>,
    pub tls: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ws_port: Option<u16>,
    pub ws_origins: Option<Vec<String>>,
    pub metrics_port: Option<u16>,
    pub cluster: Option<bool>,
    pub unix_socket: Option<bool>,
    pub shutdown_grace_ms: Option<u64>,
    pub spin_us: Option<u64>,
    pub workers: Option<usize>,
    pub unix_send_buffer: Option<usize>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub memory: FileMemory,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default)]
    pub auth: FileAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub required: Option<bool>,
    pub token_sha256: Option<Vec<String>>,
    pub jwt_hs256_secret_file: Option<PathBuf>,
    pub jwt_ed25519_public_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub backup_interval_ms: Option<u64>,
    pub max_backups: Option<usize>,
    pub max_stored_apps: Option<usize>,
    pub app_retention_ms: Option<u64>,
    pub memory_mode: Option<bool>,
    pub wal_mode: Option<bool>,
    pub cache_size: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMemory {
    pub max_block_size: Option<u64>,
    pub max_blocks: Option<usize>,
    pub volatile_dir: Option<PathBuf>,
    pub default_lock_lease_ms: Option<u64>,
    pub max_lock_lease_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_frame_len: Option<usize>,
    pub outbound_queue_frames: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub max_inflight_per_conn: Option<usize>,
    pub default_ttl_ms: Option<u64>,
    pub max_ttl_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub max_pools: Option<usize>,
    pub max_pools_per_app: Option<usize>,
    pub max_triggers_per_app: Option<usize>,
}

/// Where the server logs to besides stdout: `<data_dir>/logs/server.log`, rotated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    /// Size at which `server.log` is rotated.
    pub max_bytes: usize,
    /// Rotated files kept.
    pub files: usize,
}

/// The default of [`LogConfig::max_bytes`] (64 MiB).
pub const DEFAULT_LOG_MAX_BYTES: usize = 64 << 20;

/// The default of [`LogConfig::files`].
pub const DEFAULT_LOG_FILES: usize = 7;

/// The resolved configuration.
#[derive(Debug)]
pub struct Resolved {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// The runtime's worker threads.
    pub workers: usize,
}

/// The most worker threads `start` accepts.
pub const MAX_WORKERS: usize = 1024;

/// Half the CPUs this process may use, at least 1. Every call also runs in a caller and a
/// handler process on the same machine, and each extra worker is one more thread for tokio to
/// wake when work arrives (docs/BENCHMARKS.md has the measured trade-off).
pub fn default_workers() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
}

/// `~/.latzero`.
pub fn default_data_dir() -> PathBuf {
    dirs::home_dir().unwrap_or_else(|| PathBuf::from(".")).join(".latzero")
}

fn read_file(data_dir: &Path) -> Result<FileConfig> {
    let path = data_dir.join("config").join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot use data directory {}: cannot read config file {}",
                data_dir.display(),
                path.display()
            )
        }),
    }
}

/// A setting as the user may have given it, named every way it can be given, since the value
/// may have come from any of them: `--max-ttl-ms (LATZERO_MAX_TTL_MS, limits.max_ttl_ms in the
/// config file)`.
fn setting(flag: &str, key: &str) -> String {
    let env = flag.trim_start_matches("--").replace('-', "_").to_uppercase();
    format!("{flag} (LATZERO_{env}, {key} in the config file)")
}

/// A limit given as 0, which would have the server refuse everything it limits, is refused here
/// rather than raised to 1 behind the user's back.
fn nonzero<T: PartialEq + Default>(flag: &str, key: &str, unit: &str, v: T) -> Result<T> {
    if v == T::default() {
        bail!("{} must be at least 1 {unit}, not 0", setting(flag, key));
    }
    Ok(v)
}

/// Resolves `start`'s configuration.
pub fn resolve(args: &StartArgs) -> Result<Resolved> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let file = read_file(&data_dir)?;
    if args.cluster || file.cluster == Some(true) {
        bail!(
            "cluster mode is not available yet in this release (--cluster / LATZERO_CLUSTER_MODE / cluster in the config file)"
        );
    }
    let mut c = ServerConfig::new(data_dir);
    if let Some(h) = args.host.clone().or(file.host) {
        c.host = h;
    }
    if let Some(p) = args.port.or(file.port) {
        c.port = p;
    }
    c.tls.enabled = args.tls || file.tls == Some(true);
    c.tls.cert = args.tls_cert.clone().or(file.tls_cert);
    c.tls.key = args.tls_key.clone().or(file.tls_key);
    if !c.tls.enabled && (c.tls.cert.is_some() || c.tls.key.is_some()) {
        bail!("--tls-cert/--tls-key (or tls_cert/tls_key) are given but TLS is off; add --tls");
    }
    c.ws.port = args.ws_port.or(file.ws_port);
    c.metrics_port = args.metrics_port.or(file.metrics_port);
    c.ws.origins = if args.ws_origin.is_empty() {
        file.ws_origins.unwrap_or_default()
    } else {
        args.ws_origin.clone()
    };
    if c.ws.port.is_none() && !c.ws.origins.is_empty() {
        bail!("--ws-origin (or ws_origins) is given but WebSocket is off; add --ws-port");
    }
    c.unix_socket = !args.no_unix_socket && file.unix_socket.unwrap_or(true);
    if let Some(ms) = args.shutdown_grace_ms.or(file.shutdown_grace_ms) {
        c.shutdown_grace = Duration::from_millis(ms);
    }
    if let Some(us) = args.spin_us.or(file.spin_us) {
        let max = latzero_server::MAX_SPIN.as_micros();
        if u128::from(us) > max {
            bail!(
                "{} must be at most {max} µs (1 s); 0 turns spinning off",
                setting("--spin-us", "spin_us")
            );
        }
        c.spin = Duration::from_micros(us);
    }
    if let Some(bytes) = args.unix_send_buffer.or(file.unix_send_buffer) {
        let max = latzero_server::MAX_UNIX_SEND_BUFFER;
        if bytes > max {
            bail!(
                "{} must be at most {max} bytes; 0 keeps the kernel's default",
                setting("--unix-send-buffer", "unix_send_buffer")
            );
        }
        c.unix_send_buffer = bytes;
    }
    let workers = match args.workers.or(file.workers) {
        None => default_workers(),
        Some(n @ 1..=MAX_WORKERS) => n,
        Some(n) => bail!(
            "{} must be between 1 and {MAX_WORKERS}, not {n}",
            setting("--workers", "workers")
        ),
    };
    let l = &mut c.limits;
    let fl = file.limits;
    if let Some(v) = args.max_frame_len.or(fl.max_frame_len) {
        if v == 0 || v > u32::MAX as usize {
            bail!(
                "{} must be between 1 and {} bytes",
                setting("--max-frame-len", "limits.max_frame_len"),
                u32::MAX
            );
        }
        l.max_frame_len = v;
    }
    if let Some(v) = args.outbound_queue_frames.or(fl.outbound_queue_frames) {
        l.outbound_queue_frames = nonzero("--outbound-queue-frames", "limits.outbound_queue_frames", "frame", v)?;
    }
    if let Some(v) = args.outbound_queue_bytes.or(fl.outbound_queue_bytes) {
        l.outbound_queue_bytes = nonzero("--outbound-queue-bytes", "limits.outbound_queue_bytes", "byte", v)?;
    }
    if let Some(v) = args.max_inflight.or(fl.max_inflight_per_conn) {
        l.max_inflight_per_conn = nonzero("--max-inflight", "limits.max_inflight_per_conn", "call", v)?;
    }
    if let Some(v) = args.default_ttl_ms.or(fl.default_ttl_ms) {
        l.default_ttl = Duration::from_millis(nonzero("--default-ttl-ms", "limits.default_ttl_ms", "ms", v)?);
    }
    if let Some(v) = args.max_ttl_ms.or(fl.max_ttl_ms) {
        l.max_ttl = Duration::from_millis(nonzero("--max-ttl-ms", "limits.max_ttl_ms", "ms", v)?);
    }
    if let Some(v) = args.max_connections.or(fl.max_connections) {
        l.max_connections = nonzero("--max-connections", "limits.max_connections", "connection", v)?;
    }
    if let Some(v) = args.max_pools.or(fl.max_pools) {
        l.max_pools = nonzero("--max-pools", "limits.max_pools", "pool", v)?;
    }
    if let Some(v) = args.max_pools_per_app.or(fl.max_pools_per_app) {
        l.max_pools_per_app = nonzero("--max-pools-per-app", "limits.max_pools_per_app", "pool", v)?;
    }
    if let Some(v) = args.max_triggers_per_app.or(fl.max_triggers_per_app) {
        l.max_triggers_per_app = nonzero("--max-triggers-per-app", "limits.max_triggers_per_app", "trigger", v)?;
    }
    if let Some(v) = args.handshake_timeout_ms.or(fl.handshake_timeout_ms) {
        l.handshake_timeout = Duration::from_millis(nonzero(
            "--handshake-timeout-ms",
            "limits.handshake_timeout_ms",
            "ms",
            v,
        )?);
    }
    if l.default_ttl > l.max_ttl {
        bail!(
            "the default ttl ({} ms) exceeds the largest ({} ms): lower {}, or raise --max-ttl-ms",
            l.default_ttl.as_millis(),
            l.max_ttl.as_millis(),
            setting("--default-ttl-ms", "limits.default_ttl_ms"),
        );
    }
    let m = &mut c.memory;
    let fm = file.memory;
    if let Some(v) = args.max_block_size.or(fm.max_block_size) {
        if v == 0 {
            bail!(
                "{} must be at least 1 byte, not 0",
                setting("--max-block-size", "memory.max_block_size")
            );
        }
        m.max_block_size = v;
    }
    if let Some(v) = args.max_blocks.or(fm.max_blocks) {
        m.max_blocks = nonzero("--max-blocks", "memory.max_blocks", "block", v)?;
    }
    if let Some(v) = args.volatile_memory_dir.clone().or(fm.volatile_dir) {
        m.volatile_dir = Some(v);
    }
    if let Some(v) = args.default_lock_lease_ms.or(fm.default_lock_lease_ms) {
        m.default_lease = Duration::from_millis(nonzero(
            "--default-lock-lease-ms",
            "memory.default_lock_lease_ms",
            "ms",
            v,
        )?);
    }
    if let Some(v) = args.max_lock_lease_ms.or(fm.max_lock_lease_ms) {
        m.max_lease = Duration::from_millis(nonzero("--max-lock-lease-ms", "memory.max_lock_lease_ms", "ms", v)?);
    }
    if m.default_lease > m.max_lease {
        bail!(
            "the default lock lease ({} ms) exceeds the largest ({} ms): lower {}, or raise --max-lock-lease-ms",
            m.default_lease.as_millis(),
            m.max_lease.as_millis(),
            setting("--default-lock-lease-ms", "memory.default_lock_lease_ms"),
        );
    }
    let fs = file.store;
    c.store.memory_mode = args.memory_mode || fs.memory_mode.unwrap_or(false);
    c.store.wal_mode = !args.no_wal && fs.wal_mode.unwrap_or(true);
    if let Some(v) = args.cache_size.or(fs.cache_size) {
        c.store.cache_size = v;
    }
    if let Some(v) = args.backup_interval_ms.or(fs.backup_interval_ms) {
        c.store.backup_interval = Duration::from_millis(v);
    }
    if let Some(v) = args.max_backups.or(fs.max_backups) {
        if v == 0 {
            bail!(
                "{} must be at least 1, not 0",
                setting("--max-backups", "store.max_backups")
            );
        }
        c.store.max_backups = v;
    }
    if let Some(v) = args.max_stored_apps.or(fs.max_stored_apps) {
        c.store.max_apps = nonzero("--max-stored-apps", "store.max_stored_apps", "app", v)?;
    }
    if let Some(v) = args.app_retention_ms.or(fs.app_retention_ms) {
        c.store.app_retention = Duration::from_millis(v);
    }
    let fa = file.auth;
    c.auth.required = args.require_auth || fa.required.unwrap_or(false);
    c.auth.token_sha256 = if args.auth_token_sha256.is_empty() {
        fa.token_sha256.unwrap_or_default()
    } else {
        args.auth_token_sha256.clone()
    };
    let read_secret = |p: &Path, what: &str| -> Result<Vec<u8>> {
        let mut bytes = std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        Ok(bytes)
    };
    if let Some(p) = args.jwt_hs256_secret_file.clone().or(fa.jwt_hs256_secret_file) {
        c.auth.jwt_hs256_secret = Some(read_secret(&p, "JWT secret file")?);
    }
    if let Some(p) = args
        .jwt_ed25519_public_key_file
        .clone()
        .or(fa.jwt_ed25519_public_key_file)
    {
        c.auth.jwt_ed25519_public_pem = Some(read_secret(&p, "Ed25519 public key file")?);
    }
    let log_level = args
        .log_level
        .clone()
        .or(file.log_level)
        .unwrap_or_else(|| "info".into());
    if !matches!(log_level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
        bail!("log level '{log_level}' is not one of error, warn, info, debug, trace");
    }
    let log = LogConfig {
        level: log_level,
        max_bytes: nonzero(
            "--log-max-bytes",
            "log_max_bytes",
            "byte",
            args.log_max_bytes
                .or(file.log_max_bytes)
                .unwrap_or(DEFAULT_LOG_MAX_BYTES),
        )?,
        files: nonzero(
            "--log-files",
            "log_files",
            "file",
            args.log_files.or(file.log_files).unwrap_or(DEFAULT_LOG_FILES),
        )?,
    };
    Ok(Resolved {
        server: c,
        log,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn start_args(argv: &[&str]) -> StartArgs {
        match Cli::parse_from(argv).command {
            Command::Start(a) => *a,
            _ => unreachable!("a start command line"),
        }
    }

    /// `latzero start -d DIR EXTRA...`, resolved.
    fn resolve_in(dir: &Path, extra: &[&str]) -> Result<Resolved> {
        let d = dir.to_str().unwrap();
        resolve(&start_args(&[&["latzero", "start", "-d", d], extra].concat()))
    }

    /// Writes `DIR/config/latzero.toml`.
    fn write_config(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(dir.join("config").join(CONFIG_FILE), text).unwrap();
    }

    #[test]
    fn spin_window_comes_from_the_command_line_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spin = |extra: &[&str]| resolve_in(dir.path(), extra).unwrap().server.spin;
        if std::env::var_os("LATZERO_SPIN_US").is_none() {
            assert_eq!(spin(&[]), latzero_server::DEFAULT_SPIN);
        }
        write_config(dir.path(), "spin_us = 7\n");
        if std::env::var_os("LATZERO_SPIN_US").is_none() {
            assert_eq!(spin(&[]), Duration::from_micros(7));
        }
        assert_eq!(spin(&["--spin-us", "0"]), Duration::ZERO, "0 turns it off");
        assert_eq!(spin(&["--spin-us", "120"]), Duration::from_micros(120));
        let err = resolve_in(dir.path(), &["--spin-us", "1000001"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--spin-us (LATZERO_SPIN_US, spin_us in the config file) must be at most 1000000"),
            "{err}"
        );
    }

    #[test]
    fn unix_send_buffer_comes_from_the_command_line_over_the_file_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = |extra: &[&str]| {
            resolve_in(dir.path(), extra)
                .map(|r| r.server.unix_send_buffer)
                .map_err(|e| e.to_string())
        };
        let from_env = std::env::var_os("LATZERO_UNIX_SEND_BUFFER").is_some();
        if !from_env {
            assert_eq!(bytes(&[]), Ok(latzero_server::DEFAULT_UNIX_SEND_BUFFER));
        }
        write_config(dir.path(), "unix_send_buffer = 65536\n");
        if !from_env {
            assert_eq!(bytes(&[]), Ok(65536));
        }
        assert_eq!(
            bytes(&["--unix-send-buffer", "0"]),
            Ok(0),
            "0 keeps the kernel's default"
        );
        assert_eq!(bytes(&["--unix-send-buffer", "2147483647"]), Ok(2147483647));
        let err = bytes(&["--unix-send-buffer", "2147483648"]).unwrap_err();
        assert!(
            err.contains("--unix-send-buffer (LATZERO_UNIX_SEND_BUFFER, unix_send_buffer in the config file) must be at most 2147483647 bytes"),
            "{err}"
        );
    }

    #[test]
    fn workers_come_from_the_command_line_over_the_file_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let workers = |extra: &[&str]| {
            resolve_in(dir.path(), extra)
                .map(|r| r.workers)
                .map_err(|e| e.to_string())
        };
        let from_env = std::env::var_os("LATZERO_WORKERS").is_some();
        if !from_env {
            let cpus = std::thread::available_parallelism().unwrap().get();
            assert_eq!(workers(&[]), Ok((cpus / 2).max(1)));
        }
        write_config(dir.path(), "workers = 3\n");
        if !from_env {
            assert_eq!(workers(&[]), Ok(3));
        }
        assert_eq!(workers(&["--workers", "2"]), Ok(2));
        assert_eq!(workers(&["--workers", "1024"]), Ok(1024));
        for bad in ["0", "1025"] {
            let err = workers(&["--workers", bad]).unwrap_err();
            assert!(
                err.contains(&format!(
                    "--workers (LATZERO_WORKERS, workers in the config file) must be between 1 and 1024, not {bad}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_default_above_its_largest_names_the_setting_to_lower() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_in(dir.path(), &["--default-ttl-ms", "5000000"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the default ttl (5000000 ms) exceeds the largest (3600000 ms): lower --default-ttl-ms \
             (LATZERO_DEFAULT_TTL_MS, limits.default_ttl_ms in the config file), or raise --max-ttl-ms"
        );
        write_config(dir.path(), "[memory]\nmax_lock_lease_ms = 10\n");
        let err = resolve_in(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "the default lock lease (30000 ms) exceeds the largest (10 ms): lower --default-lock-lease-ms"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_limit_of_zero_is_refused_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        for (flag, env, key) in [
            (
                "--outbound-queue-frames",
                "LATZERO_OUTBOUND_QUEUE_FRAMES",
                "limits.outbound_queue_frames",
            ),
            (
                "--outbound-queue-bytes",
                "LATZERO_OUTBOUND_QUEUE_BYTES",
                "limits.outbound_queue_bytes",
            ),
            ("--max-inflight", "LATZERO_MAX_INFLIGHT", "limits.max_inflight_per_conn"),
            ("--default-ttl-ms", "LATZERO_DEFAULT_TTL_MS", "limits.default_ttl_ms"),
            ("--max-ttl-ms", "LATZERO_MAX_TTL_MS", "limits.max_ttl_ms"),
            ("--max-connections", "LATZERO_MAX_CONNECTIONS", "limits.max_connections"),
            ("--max-pools", "LATZERO_MAX_POOLS", "limits.max_pools"),
            (
                "--max-pools-per-app",
                "LATZERO_MAX_POOLS_PER_APP",
                "limits.max_pools_per_app",
            ),
            (
                "--max-triggers-per-app",
                "LATZERO_MAX_TRIGGERS_PER_APP",
                "limits.max_triggers_per_app",
            ),
            (
                "--handshake-timeout-ms",
                "LATZERO_HANDSHAKE_TIMEOUT_MS",
                "limits.handshake_timeout_ms",
            ),
            ("--max-blocks", "LATZERO_MAX_BLOCKS", "memory.max_blocks"),
            ("--max-stored-apps", "LATZERO_MAX_STORED_APPS", "store.max_stored_apps"),
            ("--log-max-bytes", "LATZERO_LOG_MAX_BYTES", "log_max_bytes"),
            ("--log-files", "LATZERO_LOG_FILES", "log_files"),
            (
                "--default-lock-lease-ms",
                "LATZERO_DEFAULT_LOCK_LEASE_MS",
                "memory.default_lock_lease_ms",
            ),
            (
                "--max-lock-lease-ms",
                "LATZERO_MAX_LOCK_LEASE_MS",
                "memory.max_lock_lease_ms",
            ),
        ] {
            let err = resolve_in(dir.path(), &[flag, "0"]).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{flag} 0 was taken"));
            // Named every way it can be given (the env names are the README's).
            let named = format!("{flag} ({env}, {key} in the config file) must be at least 1 ");
            assert!(err.starts_with(&named) && err.ends_with(", not 0"), "{err}");
            // Any other value of these is taken (within each default's bounds).
            assert!(resolve_in(dir.path(), &[flag, "3600000"]).is_ok(), "{flag} 3600000");
        }
    }

    #[test]
    fn the_registry_settings_come_from_flags_and_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = resolve_in(dir.path(), &[]).unwrap();
        assert_eq!(r.server.store.max_apps, 65_536);
        assert_eq!(r.server.store.app_retention, Duration::from_secs(30 * 24 * 3600));
        write_config(dir.path(), "[store]\nmax_stored_apps = 7\napp_retention_ms = 0\n");
        let r = resolve_in(dir.path(), &[]).unwrap();
        assert_eq!(
            (r.server.store.max_apps, r.server.store.app_retention),
            (7, Duration::ZERO)
        );
        let r = resolve_in(dir.path(), &["--max-stored-apps", "9", "--app-retention-ms", "5000"]).unwrap();
        assert_eq!(
            (r.server.store.max_apps, r.server.store.app_retention),
            (9, Duration::from_secs(5))
        );
    }
}
