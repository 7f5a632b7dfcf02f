//! The server: binds the listeners, owns the shared state, and runs until shut down.
//!
//! Shutdown is injected (`run(shutdown)`); signals are handled by the binary. A shutdown stops
//! accepting, fails every call in flight with SHUTTING_DOWN, tells each client (`closing`),
//! lets the writers flush for at most `shutdown_grace`, and returns.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::Instant;

use latzero_proto::message::RawValue;
use latzero_proto::{ErrorCode, PROTOCOL_VERSION, UNIX_SOCKET_NAME};
use serde_json::{Value, json};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Counters;
use crate::config::ServerConfig;
use crate::datadir::{DataDir, RuntimeInfo};
use crate::directory::Directory;
use crate::error::ServerError;
use crate::memory::Memory;
use crate::router::Router;
use crate::session::conn::{Conn, ConnId};
use crate::store::Store;
use crate::tls::Tls;
use crate::transport;

/// What [`State::gauges`] reads.
pub(crate) struct Gauges {
    pub uptime: std::time::Duration,
    pub connections: usize,
    pub calls_in_flight: usize,
    pub pools: usize,
    pub apps: usize,
    pub blocks: usize,
}

/// State shared by every session.
#[derive(Debug)]
pub(crate) struct State {
    pub config: ServerConfig,
    pub directory: RwLock<Directory>,
    pub router: Arc<Router>,
    pub memory: Memory,
    pub store: Store,
    pub auth: crate::security::Auth,
    /// The TCP port's certificate, with `--tls`.
    pub tls: Option<Tls>,
    pub counters: Arc<Counters>,
    pub conns: Mutex<HashMap<ConnId, Arc<Conn>>>,
    next_conn: AtomicU64,
    pub shutting_down: AtomicBool,
    /// Tells sessions to say goodbye and close.
    pub sessions_stop: CancellationToken,
    /// Cancelled by a `shutdown` request over the protocol.
    pub stop_requested: CancellationToken,
    started: Instant,
    tcp: SocketAddr,
    unix: Option<PathBuf>,
    /// The WebSocket port's address, if it serves one.
    ws: Option<SocketAddr>,
    /// The metrics port's address, if it serves one.
    metrics: Option<SocketAddr>,
    /// The send buffer the kernel grants the Unix sockets (`None`: its default).
    unix_send_buffer_granted: Option<usize>,
    pub spinner: Option<latzero_uds::spin::Spinner>,
}

impl State {
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn directory_mut(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The figures `/metrics` gives as gauges.
    pub fn gauges(&self) -> Gauges {
        let connections = self.conns.lock().unwrap_or_else(|e| e.into_inner()).len();
        let (pools, apps) = {
            let dir = self.directory.read().unwrap_or_else(|e| e.into_inner());
            (dir.pools.len(), dir.apps.len())
        };
        Gauges {
            uptime: self.started.elapsed(),
            connections,
            calls_in_flight: self.router.table.len(),
            pools,
            apps,
            blocks: self.memory.len(),
        }
    }

    /// The `status_result` message, listing at most `limit` pools and apps.
    pub fn status(&self, id: Option<&RawValue>, limit: Option<usize>) -> Value {
        // Connections counted before the directory is read: a session leaves the directory
        // before it leaves the connections, so an app listed here is counted too.
        let connections = self.conns.lock().unwrap_or_else(|e| e.into_inner()).len();
        let dir = self.directory.read().unwrap_or_else(|e| e.into_inner()).snapshot(limit);
        let l = &self.config.limits;
        let mut v = json!({
            "action": "status_result",
            "server": {
                "version": env!("CARGO_PKG_VERSION"),
                "protocol_version": PROTOCOL_VERSION,
                "pid": std::process::id(),
                "uptime_ms": self.started.elapsed().as_millis() as u64,
                "tcp": self.tcp.to_string(),
                "unix": self.unix.as_ref().map(|p| p.display().to_string()),
                "ws": self.ws.map(|a| a.to_string()),
                "metrics": self.metrics.map(|a| a.to_string()),
                "data_dir": self.config.data_dir.display().to_string(),
                "shutting_down": self.shutting_down.load(Ordering::Relaxed),
            },
            "connections": connections,
            "calls_in_flight": self.router.table.len(),
            "memory": {
                "blocks": self.memory.len(),
                "volatile_dir": self.memory.volatile_root().display().to_string(),
            },
            "pools": dir["pools"],
            "pools_total": dir["pools_total"],
            "apps": dir["apps"],
            "apps_total": dir["apps_total"],
            "counters": self.counters.snapshot(),
            "limits": {
                "max_frame_len": l.max_frame_len,
                "outbound_queue_frames": l.outbound_queue_frames,
                "outbound_queue_bytes": l.outbound_queue_bytes,
                "max_inflight_per_conn": l.max_inflight_per_conn,
                "default_ttl_ms": l.default_ttl.as_millis() as u64,
                "max_ttl_ms": l.max_ttl.as_millis() as u64,
                "max_connections": l.max_connections,
                "handshake_timeout_ms": l.handshake_timeout.as_millis() as u64,
                "max_pools": l.max_pools,
                "max_pools_per_app": l.max_pools_per_app,
                "max_triggers_per_app": l.max_triggers_per_app,
                "max_stored_apps": self.config.store.max_apps,
                "app_retention_ms": self.config.store.app_retention.as_millis() as u64,
                "max_block_size": self.config.memory.max_block_size,
                "max_blocks": self.config.memory.max_blocks,
                "default_lock_lease_ms": self.config.memory.default_lease.as_millis() as u64,
                "max_lock_lease_ms": self.config.memory.max_lease.as_millis() as u64,
                "unix_send_buffer": self.config.unix_send_buffer,
                "unix_send_buffer_granted": self.unix_send_buffer_granted,
            },
        });
        if let Some(id) = id.and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) {
            v["in_reply_to"] = id;
        }
        v
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    state: Arc<State>,
    tcp: TcpListener,
    unix: Option<UnixListener>,
    ws: Option<crate::ws::WsListener>,
    metrics: Option<crate::metrics::MetricsListener>,
    datadir: DataDir,
}

/// Checks the Unix sockets' send buffer at start: one the kernel cannot take at all is an
/// error, and one it cuts (to `net.core.wmem_max`) is a warning. Returns what the kernel grants
/// (`None` for zero: the kernel's default).
fn check_send_buffer(bytes: usize) -> std::io::Result<Option<usize>> {
    if bytes == 0 {
        return Ok(None);
    }
    let granted = latzero_uds::send_buffer_granted(bytes)?;
    if granted < bytes {
        tracing::warn!(
            asked = bytes,
            granted,
            "the kernel cuts Unix sockets' send buffers to net.core.wmem_max; raise it (sysctl) or lower --unix-send-buffer"
        );
    }
    Ok(Some(granted))
}

/// What a server listening at `addr` (TCP, and the WebSocket and metrics ports on its host)
/// exposes beyond this machine, as a warning for its log: nothing on a loopback address.
/// Without authentication anyone who reaches the port may call triggers, read and write blocks
/// and stop the server (the admin requests are open too); with it but without TLS, credentials
/// and payloads cross the network in clear.
fn exposure(addr: SocketAddr, auth_required: bool, tls: bool) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    match (auth_required, tls) {
        (false, _) => Some(format!(
            "listening on {addr}, beyond loopback, without --require-auth: anyone who reaches the port may call triggers, read and write memory blocks and stop the server; turn --require-auth on, or listen on --host 127.0.0.1"
        )),
        (true, false) => Some(format!(
            "listening on {addr}, beyond loopback, without --tls: credentials and payloads cross the network in clear; turn --tls on"
        )),
        (true, true) => None,
    }
}

/// What a WebSocket port that lets in pages of any origin exposes, as a warning for its log:
/// without authentication, any web page a browser on this machine opens may connect to it, as a
/// page of an allowed origin may (the Origin check is what stops the others).
fn open_to_pages(ws: &crate::ws::WsConfig, auth_required: bool) -> Option<&'static str> {
    let any = ws.port.is_some() && ws.origins.iter().any(|o| o == "*");
    (any && !auth_required).then_some(
        "the WebSocket port lets in pages of any origin (--ws-origin '*') without --require-auth: any web page a browser on this machine opens may call triggers, read and write memory blocks and stop the server; name the pages' origins, or turn --require-auth on",
    )
}

/// The longest path a Unix socket address holds: `sun_path` less its closing NUL.
const MAX_SOCKET_PATH: usize = if cfg!(any(target_os = "linux", target_os = "android")) {
    107
} else {
    103
};

/// Refuses a socket path too long to bind, with what to do about it (the standard library's
/// own error names no remedy, nor the limit).
fn check_socket_path(path: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > MAX_SOCKET_PATH {
        return Err(ServerError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

/// Binds a TCP listener on `host:port` (0: a free port); returns it with the address it got.
async fn bind_tcp(host: &str, port: u16) -> Result<(TcpListener, SocketAddr), ServerError> {
    let addr = format!("{host}:{port}");
    let l = TcpListener::bind(&addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => ServerError::AddrInUse { addr: addr.clone() },
        _ => ServerError::Bind {
            addr: addr.clone(),
            error: e,
        },
    })?;
    let bound = l.local_addr().map_err(|e| ServerError::Bind { addr, error: e })?;
    Ok((l, bound))
}

impl Server {
    /// Prepares the data directory, takes its lock and binds the listeners.
    ///
    /// A configuration [`ServerConfig::check`] refuses is refused before anything is touched.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.check()?;
        let datadir = DataDir::prepare(&config.data_dir)?;
        let (tcp, tcp_addr) = bind_tcp(&config.host, config.port).await?;
        let ws = match config.ws.port {
            None => None,
            Some(port) => Some(bind_tcp(&config.host, port).await?),
        };
        let ws_addr = ws.as_ref().map(|(_, a)| *a);
        let metrics = match config.metrics_port {
            None => None,
            Some(port) => Some(bind_tcp(&config.host, port).await?),
        };
        let metrics_addr = metrics.as_ref().map(|(_, a)| *a);
        // Unix clients' sockets and each TLS connection's inner socket pair take it.
        let bytes = config.unix_send_buffer;
        let send_buffer = check_send_buffer(bytes).map_err(|error| ServerError::SendBuffer { bytes, error })?;
        let (unix, unix_path) = if config.unix_socket {
            let path = datadir.path().join(UNIX_SOCKET_NAME);
            check_socket_path(&path)?;
            // We hold the data dir's lock, so a socket file here is left over from a crash.
            let _ = std::fs::remove_file(&path);
            let bind_err = |e| ServerError::Bind {
                addr: path.display().to_string(),
                error: e,
            };
            let l = UnixListener::bind(&path).map_err(bind_err)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
            (Some(l), Some(path))
        } else {
            (None, None)
        };
        let auth = crate::security::Auth::new(&config.auth).map_err(ServerError::Auth)?;
        let tls = match config.tls.enabled {
            true => Some(Tls::load(&config.tls, &datadir.path().join("config"), &config.host)?),
            false => None,
        };
        let store = Store::open(datadir.path(), config.store.clone())?;
        let stored_blocks = store.all_blocks().await?.into_iter().filter(|b| b.persistent).collect();
        let (memory, stale) = Memory::open(datadir.path(), config.memory.clone(), stored_blocks)?;
        for b in stale {
            store.remove_block(&b.pool, &b.block_id).await?;
        }
        let mut directory = Directory::with_limits(&config.limits);
        for rec in store.all_pools().await? {
            directory.adopt_pool(rec);
        }
        datadir.write_runtime(&RuntimeInfo {
            pid: std::process::id(),
            tcp: tcp_addr,
            unix: unix_path.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tls_fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
            ws: ws_addr,
            metrics: metrics_addr,
            max_frame_len: Some(config.limits.max_frame_len),
        })?;
        // Said once everything is bound and open, so a start that fails warns of nothing.
        if let Some(warning) = exposure(tcp_addr, config.auth.required, config.tls.enabled) {
            tracing::warn!("{warning}");
        }
        if let Some(warning) = open_to_pages(&config.ws, config.auth.required) {
            tracing::warn!("{warning}");
        }
        let counters = Arc::new(Counters::default());
        let spinner = latzero_uds::spin::Spinner::shared(config.spin);
        let state = Arc::new(State {
            memory,
            store,
            auth,
            tls,
            router: Arc::new(match metrics_addr {
                Some(_) => Router::new(counters.clone(), config.limits.clone()).with_latency(),
                None => Router::new(counters.clone(), config.limits.clone()),
            }),
            config,
            directory: RwLock::new(directory),
            counters,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            sessions_stop: CancellationToken::new(),
            stop_requested: CancellationToken::new(),
            started: Instant::now(),
            tcp: tcp_addr,
            unix: unix_path,
            ws: ws_addr,
            metrics: metrics_addr,
            unix_send_buffer_granted: send_buffer,
            spinner,
        });
        Ok(Server {
            state,
            tcp,
            unix,
            ws: ws.map(|(l, _)| crate::ws::WsListener(l)),
            metrics: metrics.map(|(l, _)| crate::metrics::MetricsListener(l)),
            datadir,
        })
    }

    /// The shared state, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.state.tcp
    }

    /// The WebSocket port's address, if it serves one (`ServerConfig::ws`).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.state.ws
    }

    /// The metrics port's address, if it serves one (`ServerConfig::metrics_port`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.state.metrics
    }

    /// The Unix socket path, if enabled.
    pub fn unix_path(&self) -> Option<&Path> {
        self.state.unix.as_deref()
    }

    /// With TLS: the SHA-256 fingerprint of the TCP port's certificate, and the certificate file.
    pub fn tls(&self) -> Option<(&str, &Path)> {
        self.state
            .tls
            .as_ref()
            .map(|t| (t.fingerprint.as_str(), t.cert_path.as_path()))
    }

    /// Serves until `shutdown` completes or a client sends `shutdown`, then shuts down
    /// gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            state,
            tcp,
            unix,
            ws,
            metrics,
            datadir,
        } = self;
        let tracker = TaskTracker::new();
        let accept_stop = CancellationToken::new();
        let timer_stop = CancellationToken::new();
        tracker.spawn(transport::accept_loop(
            state.clone(),
            tcp,
            accept_stop.clone(),
            tracker.clone(),
        ));
        if let Some(l) = ws {
            tracker.spawn(transport::accept_loop(
                state.clone(),
                l,
                accept_stop.clone(),
                tracker.clone(),
            ));
        }
        if let Some(l) = metrics {
            tracker.spawn(transport::accept_loop(
                state.clone(),
                l,
                accept_stop.clone(),
                tracker.clone(),
            ));
        }
        if let Some(l) = unix {
            tracker.spawn(transport::accept_loop(
                state.clone(),
                l,
                accept_stop.clone(),
                tracker.clone(),
            ));
        }
        let timer = tokio::spawn(state.router.clone().run_timer(timer_stop.clone()));
        let backups = tokio::spawn(crate::backup::schedule(
            state.store.clone(),
            state.config.data_dir.join("backups"),
            state.config.store.backup_interval,
            state.config.store.max_backups,
            timer_stop.clone(),
        ));
        let forget = tokio::spawn(crate::registry::forget_stale(state.clone(), timer_stop.clone()));
        tracing::info!(
            tcp = %state.tcp,
            unix = %state.unix.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "off".into()),
            data_dir = %state.config.data_dir.display(),
            pid = std::process::id(),
            "server ready"
        );
        tokio::select! {
            _ = shutdown => {}
            _ = state.stop_requested.cancelled() => {}
        }
        tracing::info!(calls_in_flight = state.router.table.len(), "shutting down");
        accept_stop.cancel();
        state.shutting_down.store(true, Ordering::SeqCst);
        state
            .router
            .fail_all(ErrorCode::ShuttingDown, "server is shutting down");
        state.sessions_stop.cancel();
        tracker.close();
        if tokio::time::timeout(state.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within the grace period; closing them");
            for c in state.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
                c.kill();
            }
            tracker.wait().await;
        }
        timer_stop.cancel();
        let _ = timer.await;
        let _ = backups.await;
        let _ = forget.await;
        for (pool, block_id, version) in state.memory.persistent_versions() {
            let u = crate::store::BlockUpdate {
                version: Some(version as i64),
                ..Default::default()
            };
            if let Err(e) = state.store.update_block(&pool, &block_id, u).await {
                tracing::warn!(pool, block = block_id, error = %e, "cannot record a block's version");
            }
        }
        state.memory.close();
        state.store.clone().close().await;
        if let Some(p) = &state.unix {
            let _ = std::fs::remove_file(p);
        }
        datadir.clear_runtime();
        tracing::info!("server stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_beyond_loopback_is_warned_of_unless_authenticated_and_encrypted() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        for local in ["127.0.0.1:45227", "127.8.0.1:1", "[::1]:45227"] {
            for (auth, tls) in [(false, false), (true, false), (true, true)] {
                assert_eq!(exposure(at(local), auth, tls), None, "{local}");
            }
        }
        for open in ["0.0.0.0:45227", "192.168.1.5:45227", "[::]:45227"] {
            let w = exposure(at(open), false, true).unwrap();
            assert!(w.contains("--require-auth") && w.contains(open), "{w}");
            let w = exposure(at(open), true, false).unwrap();
            assert!(w.contains("--tls") && !w.contains("--require-auth"), "{w}");
            assert_eq!(exposure(at(open), true, true), None);
        }
    }

    #[test]
    fn a_websocket_port_open_to_any_page_is_warned_of_without_auth() {
        let ws = |port: Option<u16>, origins: &[&str]| crate::ws::WsConfig {
            port,
            origins: origins.iter().map(|o| o.to_string()).collect(),
        };
        let any = ws(Some(0), &["http://localhost:8080", "*"]);
        assert!(open_to_pages(&any, false).unwrap().contains("--ws-origin '*'"));
        assert_eq!(open_to_pages(&any, true), None);
        assert_eq!(open_to_pages(&ws(Some(0), &["http://localhost:8080"]), false), None);
        assert_eq!(open_to_pages(&ws(None, &["*"]), false), None);
    }

    /// The limit is the kernel's: a path of `MAX_SOCKET_PATH` bytes binds, and one byte more is
    /// refused by the check, as it is by the bind itself.
    #[test]
    fn the_socket_path_limit_is_the_one_bind_has() {
        let dir = tempfile::tempdir().unwrap();
        let at = |len: usize| {
            let base = dir.path().as_os_str().len() + 1;
            dir.path().join("s".repeat(len - base))
        };
        let longest = at(MAX_SOCKET_PATH);
        check_socket_path(&longest).unwrap();
        std::os::unix::net::UnixListener::bind(&longest).unwrap();
        let over = at(MAX_SOCKET_PATH + 1);
        assert!(std::os::unix::net::UnixListener::bind(&over).is_err());
        let e = check_socket_path(&over).unwrap_err().to_string();
        assert!(
            e.contains(&format!("at most {MAX_SOCKET_PATH} bytes")) && e.contains("--no-unix-socket"),
            "{e}"
        );
    }
}
