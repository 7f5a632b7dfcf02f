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
    /// Pools the server holds at once, stored and live (OVERLOADED for a join or `pool_create`
    /// that would make one more).
    pub max_pools: usize,
    /// Pools one app may be in at once (OVERLOADED for a join past it).
    pub max_pools_per_app: usize,
    /// Triggers one app may register (OVERLOADED for a registration past it).
    pub max_triggers_per_app: usize,
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
            max_pools: 65_536,
            max_pools_per_app: 1_024,
            max_triggers_per_app: 1_024,
        }
    }
}

/// The smallest `limits.max_frame_len` a server takes: a handshake and its answer must fit.
pub const MIN_FRAME_LEN: usize = 1024;

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
    /// TLS on the TCP port (and on the WebSocket port, as `wss://`).
    pub tls: crate::tls::TlsConfig,
    /// The WebSocket port, for browsers: off unless it has a port.
    pub ws: crate::ws::WsConfig,
    /// The metrics port (HTTP: `/metrics` for Prometheus, `/healthz`), on the TCP port's host;
    /// `None`: off (and no call latency is kept); 0 picks a free one.
    pub metrics_port: Option<u16>,
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
            ws: crate::ws::WsConfig::default(),
            metrics_port: None,
            auth: crate::security::AuthConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            spin: DEFAULT_SPIN,
            unix_send_buffer: DEFAULT_UNIX_SEND_BUFFER,
        }
    }

    /// Refuses settings that would leave a server refusing everything they limit (a frame limit
    /// below [`MIN_FRAME_LEN`] among them): a limit, a
    /// timeout or a lease of zero, a default above its maximum, a frame length the wire's
    /// four-byte length cannot carry. [`Server::bind`](crate::Server::bind) calls it first, so an
    /// embedder that builds its configuration in code is told as `latzero start` tells a user.
    /// Zero keeps a meaning where the field's documentation gives it one (`spin`,
    /// `unix_send_buffer`, `store.backup_interval`, `store.app_retention`).
    pub fn check(&self) -> Result<(), crate::ServerError> {
        let l = &self.limits;
        let m = &self.memory;
        let refuse = |setting: &'static str, why: String| Err(crate::ServerError::Config { setting, why });
        let at_least_one = [
            ("limits.max_frame_len", l.max_frame_len),
            ("limits.outbound_queue_frames", l.outbound_queue_frames),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.max_inflight_per_conn", l.max_inflight_per_conn),
            ("limits.max_connections", l.max_connections),
            ("limits.max_pools", l.max_pools),
            ("limits.max_pools_per_app", l.max_pools_per_app),
            ("limits.max_triggers_per_app", l.max_triggers_per_app),
            ("memory.max_blocks", m.max_blocks),
            ("store.max_backups", self.store.max_backups),
            ("store.max_stored_apps", self.store.max_apps),
        ];
        for (setting, v) in at_least_one {
            if v == 0 {
                return refuse(setting, "must be at least 1, not 0".into());
            }
        }
        if m.max_block_size == 0 {
            return refuse("memory.max_block_size", "must be at least 1 byte, not 0".into());
        }
        let times = [
            ("limits.default_ttl", l.default_ttl),
            ("limits.max_ttl", l.max_ttl),
            ("limits.handshake_timeout", l.handshake_timeout),
            ("memory.default_lease", m.default_lease),
            ("memory.max_lease", m.max_lease),
        ];
        for (setting, v) in times {
            if v.is_zero() {
                return refuse(setting, "must be longer than zero".into());
            }
        }
        if l.max_frame_len < MIN_FRAME_LEN {
            // Past the zero check: a limit below a handshake's size refuses every client, each
            // with an error that names its first frame, not the setting.
            let why = format!(
                "must be at least {MIN_FRAME_LEN} bytes (a handshake and its answer must fit), not {}",
                l.max_frame_len
            );
            return refuse("limits.max_frame_len", why);
        }
        if l.max_frame_len > u32::MAX as usize {
            let why = format!("must be at most {} bytes (a frame's length is four bytes)", u32::MAX);
            return refuse("limits.max_frame_len", why);
        }
        if l.default_ttl > l.max_ttl {
            let why = format!("({:?}) exceeds limits.max_ttl ({:?})", l.default_ttl, l.max_ttl);
            return refuse("limits.default_ttl", why);
        }
        if m.default_lease > m.max_lease {
            let why = format!("({:?}) exceeds memory.max_lease ({:?})", m.default_lease, m.max_lease);
            return refuse("memory.default_lease", why);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerError;

    fn refused(c: &ServerConfig) -> (&'static str, String) {
        match c.check() {
            Err(ServerError::Config { setting, why }) => (setting, why),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_pass() {
        ServerConfig::new("/d").check().unwrap();
    }

    /// Every limit, timeout and lease of zero is refused, naming the setting; the zeros that
    /// mean something are taken.
    #[test]
    fn zero_is_refused_naming_the_setting() {
        type Set = fn(&mut ServerConfig);
        let zeros: [(&str, Set); 17] = [
            ("limits.max_frame_len", |c| c.limits.max_frame_len = 0),
            ("limits.max_pools", |c| c.limits.max_pools = 0),
            ("limits.max_pools_per_app", |c| c.limits.max_pools_per_app = 0),
            ("limits.max_triggers_per_app", |c| c.limits.max_triggers_per_app = 0),
            ("limits.outbound_queue_frames", |c| c.limits.outbound_queue_frames = 0),
            ("limits.outbound_queue_bytes", |c| c.limits.outbound_queue_bytes = 0),
            ("limits.max_inflight_per_conn", |c| c.limits.max_inflight_per_conn = 0),
            ("limits.max_connections", |c| c.limits.max_connections = 0),
            ("limits.default_ttl", |c| c.limits.default_ttl = Duration::ZERO),
            ("limits.max_ttl", |c| c.limits.max_ttl = Duration::ZERO),
            ("limits.handshake_timeout", |c| {
                c.limits.handshake_timeout = Duration::ZERO
            }),
            ("memory.max_block_size", |c| c.memory.max_block_size = 0),
            ("memory.max_blocks", |c| c.memory.max_blocks = 0),
            ("memory.default_lease", |c| c.memory.default_lease = Duration::ZERO),
            ("memory.max_lease", |c| c.memory.max_lease = Duration::ZERO),
            ("store.max_backups", |c| c.store.max_backups = 0),
            ("store.max_stored_apps", |c| c.store.max_apps = 0),
        ];
        for (name, set) in zeros {
            let mut c = ServerConfig::new("/d");
            set(&mut c);
            let (setting, why) = refused(&c);
            assert_eq!(setting, name);
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(&why), "{e}");
        }
        let mut c = ServerConfig::new("/d");
        c.spin = Duration::ZERO;
        c.unix_send_buffer = 0;
        c.store.backup_interval = Duration::ZERO;
        c.store.app_retention = Duration::ZERO;
        c.check().unwrap();
    }

    #[test]
    fn a_default_above_its_maximum_is_refused() {
        let mut c = ServerConfig::new("/d");
        c.limits.max_ttl = Duration::from_secs(1);
        assert_eq!(refused(&c).0, "limits.default_ttl");
        c.limits.default_ttl = Duration::from_secs(1);
        c.check().unwrap();
        c.memory.max_lease = Duration::from_secs(1);
        assert_eq!(refused(&c).0, "memory.default_lease");
        c.memory.default_lease = Duration::from_millis(1);
        c.check().unwrap();
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_frame_length_past_four_bytes_is_refused() {
        let mut c = ServerConfig::new("/d");
        c.limits.max_frame_len = u32::MAX as usize;
        c.check().unwrap();
        c.limits.max_frame_len = u32::MAX as usize + 1;
        let (setting, why) = refused(&c);
        assert_eq!(setting, "limits.max_frame_len");
        assert!(why.contains("at most"), "{why}");
    }

    #[test]
    fn a_frame_length_too_small_for_a_handshake_is_refused() {
        let mut c = ServerConfig::new("/d");
        c.limits.max_frame_len = MIN_FRAME_LEN;
        c.check().unwrap();
        c.limits.max_frame_len = MIN_FRAME_LEN - 1;
        let (setting, why) = refused(&c);
        assert_eq!(setting, "limits.max_frame_len");
        assert!(why.contains("at least 1024"), "{why}");
    }

    /// `bind` checks before it creates the data directory or binds a port.
    #[tokio::test]
    async fn bind_refuses_before_touching_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut c = ServerConfig::new(&dir);
        c.port = 0;
        c.limits.max_connections = 0;
        let e = crate::Server::bind(c).await.unwrap_err();
        assert!(
            matches!(
                e,
                ServerError::Config {
                    setting: "limits.max_connections",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!dir.exists(), "the data directory was created");
    }
}
