//! The command line: clap-derive types only. `command/<verb>.rs` does the work.
// The doc comments here are `latzero --help`'s text, printed as written: placeholders such as
// `<pid>` stay as they are, not as rustdoc's markup.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use latzero_proto::{AppId, BlockId, NameError, PoolName, TriggerName};

/// LatZero: one local fabric for processes to call each other (RPC, emit) and share memory
/// blocks, in pools.
#[derive(Debug, Parser)]
#[command(
    name = "latzero",
    version,
    propagate_version = true,
    after_help = "The commands that talk to a server find it through --data-dir (its server.json) or --host/--port.\n\
                  With a server started with --require-auth they send $LATZERO_TOKEN, or without it the JWT in $LATZERO_JWT."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server in the foreground (Ctrl-C or `latzero stop` stops it)
    Start(Box<StartArgs>),
    /// Show the running server: uptime, connections, pools, apps, triggers, counters
    Status(StatusArgs),
    /// Stop the running server gracefully (in-flight calls fail with SHUTTING_DOWN)
    Stop(TargetArgs),
    /// Check the running server's health: its database takes a write, its directories take a
    /// file, every memory block's file can be attached; exits non-zero unless all pass
    Health(HealthArgs),
    /// Call a trigger and print its result
    Call(CallArgs),
    /// Emit to every handler of a trigger in a pool (fire-and-forget) and print the receipt
    Emit(EmitArgs),
    /// Serve triggers from the command line: echo the request or answer with fixed JSON
    Reply(ReplyArgs),
    /// Memory blocks: create, list, stat, read, write, watch, lock, checksum, delete
    #[command(subcommand)]
    Mem(MemCmd),
    /// Stored app registrations: list them (the default), or remove one
    Apps(AppsArgs),
    /// Pools: list (the default), show, create, update, remove
    Pools(PoolsArgs),
    /// Memory blocks of every pool, or of one (a table, or --json)
    Blocks(BlocksArgs),
    /// Back the running server's database up now, into <data_dir>/backups/ (progress on stderr)
    Backup(TargetArgs),
    /// Replace the database with a backup (the server must be stopped; it is checked first)
    Restore(RestoreArgs),
    /// Authentication helpers
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Encrypted pools: generate a pool's triple key, or rotate it
    Keys(KeysArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub cmd: KeysCmd,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an encrypted pool with new keys (SigilKey: join, CipherShard: read, OblivionSeal:
    /// write); prints them once; the server keeps only verifiers
    Generate {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Connect as this app; it owns the pool unless --owners says otherwise
        #[arg(long, value_parser = app_id)]
        app: String,
        /// Apps that may rotate, change or remove it, comma-separated
        #[arg(long, value_delimiter = ',', value_parser = app_id)]
        owners: Vec<String>,
        /// Free text
        #[arg(long, default_value = "")]
        description: String,
        /// Who may do what (a JSON object of app lists keyed join, call, emit, read, write)
        #[arg(long)]
        policies: Option<String>,
        /// Write the keys into this new file (mode 600; an existing file is not overwritten)
        /// instead of printing them, for the tools' --keys FILE
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Start a new key generation (connect as an owner); prints the new keys once. Records
    /// sealed under older generations stay readable with the old keys until rewritten
    Rotate {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// An owner of the pool to connect as
        #[arg(long, value_parser = app_id)]
        app: String,
        /// Write the new keys into this new file (mode 600; an existing file is not overwritten)
        /// instead of printing them. Readers of older records need the older keys too: a keys
        /// file may hold several generations' lines
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Make a random static token; prints it once, with the SHA-256 the server is given
    Token,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file
    pub file: PathBuf,
    /// Data directory to restore into [default: ~/.latzero]
    #[arg(short = 'd', long, env = "LATZERO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AppsArgs {
    #[command(subcommand)]
    pub cmd: Option<AppsCmd>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// List the stored registrations, with whether each app is connected and when it was last seen
    List,
    /// Forget an app's stored registration (refused while it is connected): it leaves the list,
    /// and its pools and triggers are not restored when it comes back
    Remove {
        /// The app
        #[arg(value_parser = app_id)]
        app: String,
    },
}

#[derive(Debug, Args)]
pub struct BlocksArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only this pool
    #[arg(value_parser = pool_name)]
    pub pool: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub cmd: Option<PoolsCmd>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PoolsCmd {
    /// List pools (stored and live)
    List,
    /// One pool: type, description, owners, policies, members, triggers, blocks
    Show {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Create a stored pool
    Create {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Free text
        #[arg(long, default_value = "")]
        description: String,
        /// Apps that may change or remove it, comma-separated (required unless --app names the owner)
        #[arg(long, value_delimiter = ',', value_parser = app_id)]
        owners: Vec<String>,
        /// Connect as this app (it becomes the owner when --owners is not given)
        #[arg(long, value_parser = app_id)]
        app: Option<String>,
        /// local; global needs cluster mode (not available yet); create an encrypted pool with
        /// `latzero keys generate`, which makes its keys
        #[arg(long = "type", default_value = "local")]
        kind: String,
        /// Who may do what: a JSON object of app lists keyed join, call, emit, read, write
        /// ("*" for any app; owners may always do everything)
        #[arg(long)]
        policies: Option<String>,
    },
    /// Change a stored pool (connect as one of its owners)
    Update {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// An owner of the pool to connect as
        #[arg(long, value_parser = app_id)]
        app: String,
        /// New description
        #[arg(long)]
        description: Option<String>,
        /// New owners, comma-separated
        #[arg(long, value_delimiter = ',', value_parser = app_id)]
        owners: Option<Vec<String>>,
        /// New policies, replacing the old ones (a JSON object of app lists keyed join, call,
        /// emit, read, write)
        #[arg(long)]
        policies: Option<String>,
    },
    /// Remove a pool (connect as one of its owners); refused while other apps are in it
    Remove {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// An owner of the pool to connect as (any app id for a pool that is not stored)
        #[arg(long, value_parser = app_id)]
        app: String,
        /// Remove it even with members (they leave it; its non-persistent blocks go)
        #[arg(long)]
        force: bool,
    },
}

/// `latzero mem ...`. Each connects as an app (default `latzero-cli-<pid>`) that joins POOL.
#[derive(Debug, Subcommand)]
pub enum MemCmd {
    /// Create a block and describe it (in words, or --json)
    Create(MemCreateArgs),
    /// List the blocks of a pool (a table, or --json)
    List(MemListArgs),
    /// Describe a block and its state in words, or --json (version, locks, watchers, stream cursors)
    Stat(MemStatArgs),
    /// Read a block: raw bytes (binary), the document (json), or records (stream, --consumer)
    Read(MemReadArgs),
    /// Write a block: bytes at an offset (binary), the document (json), or append records (stream)
    Write(MemWriteArgs),
    /// Print a block's events as JSON lines until interrupted (or --count changes)
    Watch(MemWatchArgs),
    /// Take a lock lease and hold it until interrupted (or --hold-ms), renewing it; exits non-zero
    /// if it is lost (the lease lapsed, or went with the connection)
    Lock(MemLockArgs),
    /// Hash a block through this process's own mapping (zero copy) and print it with its version
    Checksum(MemBlockArgs),
    /// Delete a block
    Delete(MemBlockArgs),
}

/// Which server, which app, which block.
#[derive(Debug, Args)]
pub struct MemBlockArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// App id to connect as [default: latzero-cli-<pid>]
    #[arg(long, value_parser = app_id)]
    pub app: Option<String>,
    /// The pool
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// The block id
    #[arg(value_parser = block_id)]
    pub block: String,
    /// The pool is encrypted: its keys, in this file (as `latzero keys generate` wrote them).
    /// The pool is joined by proving its SigilKey; binary blocks are read and written as one
    /// sealed record, and a stream's records are sealed and opened, end to end
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MemListArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// App id to connect as [default: latzero-cli-<pid>]
    #[arg(long, value_parser = app_id)]
    pub app: Option<String>,
    /// The pool
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// The pool is encrypted: its keys, in this file (as `latzero keys generate` wrote them).
    /// The pool is joined by proving its SigilKey
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MemCreateArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// Data bytes
    #[arg(long)]
    pub size: u64,
    /// binary, json or stream
    #[arg(long = "type", default_value = "binary")]
    pub kind: String,
    /// Keep the block (and its content) across server restarts
    #[arg(long)]
    pub persistent: bool,
    /// Apps that may read, comma-separated ('*': every member of the pool)
    #[arg(long, value_delimiter = ',', default_value = "*", value_parser = app_or_any)]
    pub readers: Vec<String>,
    /// Apps that may write, comma-separated ('*': every member of the pool)
    #[arg(long, value_delimiter = ',', default_value = "*", value_parser = app_or_any)]
    pub writers: Vec<String>,
    /// Streams: drop the oldest records when full (default: refuse the append)
    #[arg(long)]
    pub overwrite: bool,
    /// Print the new block's description as JSON instead of in words
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MemStatArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// Print JSON instead of words
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MemReadArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// Binary: first byte [default: 0]
    #[arg(long)]
    pub offset: Option<u64>,
    /// Binary: bytes to read [default: to the end]
    #[arg(long)]
    pub length: Option<u64>,
    /// Stream: the consumer whose cursor to read from (required for streams); one record a line, its bytes as they are
    #[arg(long)]
    pub consumer: Option<String>,
    /// Stream: most records to read (at least 1) [default: 1000]
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub max: Option<usize>,
    /// Binary: write the bytes to this file instead of stdout
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct MemWriteArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// The data: bytes (binary), a JSON document (json) or one record (stream)
    #[arg(conflicts_with_all = ["file", "fill", "lines"])]
    pub data: Option<String>,
    /// Binary: where to write [default: 0]
    #[arg(long)]
    pub offset: Option<u64>,
    /// Read the data from this file ('-': stdin)
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Binary: fill --length bytes (default: to the end) with this byte value, in place
    #[arg(long)]
    pub fill: Option<u8>,
    /// Binary with --fill: how many bytes
    #[arg(long)]
    pub length: Option<u64>,
    /// Stream: append each line of standard input (its bytes, without the line end) as a record
    #[arg(long)]
    pub lines: bool,
}

#[derive(Debug, Args)]
pub struct MemWatchArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// The last version seen; an older block is reported at once
    #[arg(long)]
    pub since: Option<u64>,
    /// Exit after this many `changed` events (at least 1)
    #[arg(long, value_parser = at_least_one::<u64>)]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct MemLockArgs {
    #[command(flatten)]
    pub block: MemBlockArgs,
    /// A shared lease (readers) instead of an exclusive one
    #[arg(long)]
    pub shared: bool,
    /// Lease, ms (at least 1), renewed at each half while the lock is held; a renewal that
    /// finds it lapsed (the process held up longer) lets the lock go and exits 1 [default: the
    /// server's, 30000]
    #[arg(long, value_parser = at_least_one::<u64>)]
    pub lease_ms: Option<u64>,
    /// How long to wait for the lock, ms (0: fail at once if it is held)
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
    /// Release after this long, ms [default: hold until interrupted]
    #[arg(long)]
    pub hold_ms: Option<u64>,
}

/// `latzero start`. `-h` is the host, as in the original CLI; help is `--help`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct StartArgs {
    /// TCP port [default: 45227; 0 picks a free port]
    #[arg(short = 'p', long, env = "LATZERO_PORT")]
    pub port: Option<u16>,
    /// TCP host to bind [default: 127.0.0.1]
    #[arg(short = 'h', long, env = "LATZERO_HOST")]
    pub host: Option<String>,
    /// Data directory [default: ~/.latzero]
    #[arg(short = 'd', long, env = "LATZERO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Enable cluster mode (not available yet)
    #[arg(long, env = "LATZERO_CLUSTER_MODE", action = ArgAction::SetTrue)]
    pub cluster: bool,
    /// Serve TLS on the TCP port (a self-signed certificate is generated into
    /// <data_dir>/config/ unless --tls-cert/--tls-key name one; its fingerprint is printed)
    #[arg(long, env = "LATZERO_ENABLE_TLS", action = ArgAction::SetTrue)]
    pub tls: bool,
    /// TLS certificate chain, PEM (with --tls-key)
    #[arg(long, env = "LATZERO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (with --tls-cert)
    #[arg(long, env = "LATZERO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Also serve WebSocket on this port (on --host), for browsers: ws://HOST:PORT, or wss://
    /// with --tls; 0 picks a free one [default: off]
    #[arg(long, env = "LATZERO_WS_PORT")]
    pub ws_port: Option<u16>,
    /// A page origin allowed to connect over WebSocket, as browsers send it
    /// (http://localhost:8080); repeatable; * allows any page. Pages of other origins are
    /// refused (403); programs, which send no Origin, are not asked [default: none]
    #[arg(long, env = "LATZERO_WS_ORIGIN", value_delimiter = ',')]
    pub ws_origin: Vec<String>,
    /// Also serve HTTP on this port (on --host): GET /metrics in Prometheus's text format
    /// (counters, gauges, a call latency histogram) and GET /healthz (the health checks; 200 or
    /// 503); 0 picks a free one [default: off]
    #[arg(long, env = "LATZERO_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Log level: error, warn, info, debug, trace [default: info]
    #[arg(long, env = "LATZERO_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Size at which logs/server.log is rotated (to server.log.1, .2, ...), bytes [default: 67108864]
    #[arg(long, env = "LATZERO_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<usize>,
    /// Rotated log files kept beside logs/server.log; the oldest goes [default: 7]
    #[arg(long, env = "LATZERO_LOG_FILES")]
    pub log_files: Option<usize>,
    /// Do not listen on the Unix socket in the data directory
    #[arg(long, env = "LATZERO_NO_UNIX_SOCKET", action = ArgAction::SetTrue)]
    pub no_unix_socket: bool,
    /// Largest frame payload accepted, bytes (1024 to 4294967295) [default: 16777216]
    #[arg(long, env = "LATZERO_MAX_FRAME_LEN")]
    pub max_frame_len: Option<usize>,
    /// Frames queued to one connection before it is closed as a slow consumer [default: 1048576]
    #[arg(long, env = "LATZERO_OUTBOUND_QUEUE_FRAMES")]
    pub outbound_queue_frames: Option<usize>,
    /// Bytes queued to one connection before it is closed as a slow consumer [default: 67108864]
    #[arg(long, env = "LATZERO_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<usize>,
    /// Calls one connection may have in flight [default: 65536]
    #[arg(long, env = "LATZERO_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Timeout of calls that give no ttl, ms [default: 30000]
    #[arg(long, env = "LATZERO_DEFAULT_TTL_MS")]
    pub default_ttl_ms: Option<u64>,
    /// Largest ttl accepted, ms [default: 3600000]
    #[arg(long, env = "LATZERO_MAX_TTL_MS")]
    pub max_ttl_ms: Option<u64>,
    /// Connections served at once; one more is told OVERLOADED and closed [default: 65536]
    #[arg(long, env = "LATZERO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Pools the server holds at once, stored and live; a join or pool create past it is OVERLOADED [default: 65536]
    #[arg(long, env = "LATZERO_MAX_POOLS")]
    pub max_pools: Option<usize>,
    /// Pools one app may be in at once; a join past it is OVERLOADED [default: 1024]
    #[arg(long, env = "LATZERO_MAX_POOLS_PER_APP")]
    pub max_pools_per_app: Option<usize>,
    /// Triggers one app may register; a registration past it is OVERLOADED [default: 1024]
    #[arg(long, env = "LATZERO_MAX_TRIGGERS_PER_APP")]
    pub max_triggers_per_app: Option<usize>,
    /// How long a connection may stay without a handshake, ms [default: 10000]
    #[arg(long, env = "LATZERO_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Largest memory block, bytes [default: 1073741824]
    #[arg(long, env = "LATZERO_MAX_BLOCK_SIZE")]
    pub max_block_size: Option<u64>,
    /// Memory blocks held at once [default: 4096]
    #[arg(long, env = "LATZERO_MAX_BLOCKS")]
    pub max_blocks: Option<usize>,
    /// Directory for non-persistent memory blocks (in its subdirectory latzero-<hash of the data dir>) [default: /dev/shm]
    #[arg(long, env = "LATZERO_VOLATILE_MEMORY_DIR")]
    pub volatile_memory_dir: Option<PathBuf>,
    /// Lease of a block lock that names none, ms [default: 30000]
    #[arg(long, env = "LATZERO_DEFAULT_LOCK_LEASE_MS")]
    pub default_lock_lease_ms: Option<u64>,
    /// Longest block lock lease and lock wait accepted, ms [default: 3600000]
    #[arg(long, env = "LATZERO_MAX_LOCK_LEASE_MS")]
    pub max_lock_lease_ms: Option<u64>,
    /// Keep the database in memory (nothing is remembered across restarts)
    #[arg(long, env = "LATZERO_MEMORY_MODE", action = ArgAction::SetTrue)]
    pub memory_mode: bool,
    /// Turn off SQLite's write-ahead log (rollback journal, synchronous=FULL)
    #[arg(long, env = "LATZERO_NO_WAL", action = ArgAction::SetTrue)]
    pub no_wal: bool,
    /// SQLite cache size (positive: pages; negative: KiB) [default: 1000]
    #[arg(long, env = "LATZERO_CACHE_SIZE", allow_negative_numbers = true)]
    pub cache_size: Option<i64>,
    /// Refuse connections (and admin requests) without a valid token or JWT
    #[arg(long, env = "LATZERO_REQUIRE_AUTH", action = ArgAction::SetTrue)]
    pub require_auth: bool,
    /// SHA-256 (64 hex digits) of an accepted static token; repeatable (`latzero auth token` makes one)
    #[arg(long, env = "LATZERO_AUTH_TOKEN_SHA256", value_delimiter = ',')]
    pub auth_token_sha256: Vec<String>,
    /// File holding the HS256 secret for JWTs
    #[arg(long, env = "LATZERO_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// File holding the Ed25519 public key (PEM) for EdDSA JWTs
    #[arg(long, env = "LATZERO_JWT_ED25519_PUBLIC_KEY_FILE")]
    pub jwt_ed25519_public_key_file: Option<PathBuf>,
    /// Time between automatic database backups, ms; 0 turns them off [default: 86400000]
    #[arg(long, env = "LATZERO_BACKUP_INTERVAL_MS")]
    pub backup_interval_ms: Option<u64>,
    /// Automatic backups kept in <data_dir>/backups [default: 7]
    #[arg(long, env = "LATZERO_MAX_BACKUPS")]
    pub max_backups: Option<usize>,
    /// App registrations stored at most; a new app past it is served but not remembered (its
    /// handshake's ack says so in store_error) [default: 65536]
    #[arg(long, env = "LATZERO_MAX_STORED_APPS")]
    pub max_stored_apps: Option<usize>,
    /// How long the registration of an app that is not connected is kept after it was last
    /// seen, ms of the server running (time it was stopped does not count); checked at start,
    /// hourly and at shutdown; 0 keeps it for ever [default: 2592000000, 30 days]
    #[arg(long, env = "LATZERO_APP_RETENTION_MS")]
    pub app_retention_ms: Option<u64>,
    /// How long shutdown waits for connections to flush, ms [default: 5000]
    #[arg(long, env = "LATZERO_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// After a message, keep polling the sockets this long before sleeping, µs; 0 turns it
    /// off. Saves a wake-up per message on machines that halt idle CPUs, for up to one busy
    /// CPU while messages keep coming; off by itself on one CPU, and while other threads want
    /// the CPU [default: 50]
    #[arg(long, env = "LATZERO_SPIN_US")]
    pub spin_us: Option<u64>,
    /// Threads that run the server's connections, 1 to 1024 [default: half the CPUs this
    /// process may use, at least 1: the server shares the machine with the processes it
    /// serves, and fewer threads wake each other less]
    #[arg(long, env = "LATZERO_WORKERS")]
    pub workers: Option<usize>,
    /// Send buffer asked for on each Unix socket the server writes to, bytes; 0 keeps the
    /// kernel's default (208 KiB). Linux cuts it to net.core.wmem_max (the server warns at
    /// start). A ceiling, not an allocation: fewer full sockets when fanning out [default:
    /// 4194304, loopback TCP's own ceiling]
    #[arg(long, env = "LATZERO_UNIX_SEND_BUFFER")]
    pub unix_send_buffer: Option<usize>,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// How to find a running server: explicit --host/--port, else the data directory's
/// server.json (Unix socket preferred), else 127.0.0.1:45227.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Data directory of the server [default: ~/.latzero]
    #[arg(short = 'd', long, env = "LATZERO_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Server host (forces TCP)
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Server port (forces TCP)
    #[arg(short = 'p', long, global = true)]
    pub port: Option<u16>,
    /// Connect over TLS, pinning the server certificate's SHA-256 (as `latzero start --tls`
    /// prints it; read from server.json when the TCP port is used without this)
    #[arg(long, env = "LATZERO_TLS_FINGERPRINT", global = true)]
    pub tls_fingerprint: Option<String>,
    /// Connect over TLS, verifying the server against this CA certificate (PEM)
    #[arg(long, env = "LATZERO_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Longest answer read from the server, bytes (1024 to 4294967295; an app's connection
    /// reads frames up to this plus 65536 for the envelope) [default: the server's own limit,
    /// from its server.json or an app's handshake; 16777216 for admin requests (status, the
    /// listings, stop, health, backup) to a server named by --host/--port]
    #[arg(long, env = "LATZERO_MAX_FRAME_LEN", global = true)]
    pub max_frame_len: Option<usize>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the server's answer as JSON (still exiting non-zero when unhealthy)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the raw status as JSON
    #[arg(long)]
    pub json: bool,
    /// List at most this many pools and this many connected apps, the first by name (0: all;
    /// every pool and app is in `latzero pools` and `latzero apps`, a page at a time)
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// App id to connect as [default: latzero-cli-<pid>]
    #[arg(long, value_parser = app_id)]
    pub app: Option<String>,
    /// Pool to call in
    #[arg(long, value_parser = pool_name)]
    pub pool: String,
    /// Trigger to call
    #[arg(value_parser = trigger_name)]
    pub trigger: String,
    /// JSON payload [default: null]
    #[arg(conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the JSON payload from this file ('-': stdin), for payloads too large for an argument
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Run on this app instead of any handler
    #[arg(long, value_parser = app_id)]
    pub to: Option<String>,
    /// Call every handler and print each result
    #[arg(long, conflicts_with_all = ["to", "count"])]
    pub broadcast: bool,
    /// Call timeout in ms (at least 1; one over the server's max ttl is refused) [default: 30000]
    #[arg(long, value_parser = at_least_one::<u64>)]
    pub timeout_ms: Option<u64>,
    /// Make this many calls (at least 1) and print a JSON summary instead of each result: outcomes,
    /// calls/s, and latency_us percentiles (p50, p90, p99, p99.9, max) of the calls answered
    #[arg(long, value_parser = at_least_one::<u64>)]
    pub count: Option<u64>,
    /// Calls in flight at once with --count (at least 1) [default: 1]
    #[arg(long, requires = "count", value_parser = at_least_one::<u64>)]
    pub concurrency: Option<u64>,
    /// With --count: send {"seq":N,"from":APP} instead of DATA and check each reply echoes it
    /// (as `latzero reply` does by default)
    #[arg(long, requires = "count", conflicts_with_all = ["data", "file"])]
    pub expect_echo: bool,
    /// The pool is encrypted: its keys, in this file (the lines `latzero keys generate` printed;
    /// in a file, not on the command line, where the process list shows it). The pool is joined
    /// by proving its SigilKey, and payloads are sealed and opened end to end
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// App id to connect as [default: latzero-cli-<pid>]
    #[arg(long, value_parser = app_id)]
    pub app: Option<String>,
    /// Pool to emit in
    #[arg(long, value_parser = pool_name)]
    pub pool: String,
    /// Trigger to emit to
    #[arg(value_parser = trigger_name)]
    pub trigger: String,
    /// JSON payload [default: null]
    #[arg(conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the JSON payload from this file ('-': stdin), for payloads too large for an argument
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The pool is encrypted: its keys, in this file (the lines `latzero keys generate` printed;
    /// in a file, not on the command line, where the process list shows it). The pool is joined
    /// by proving its SigilKey, and payloads are sealed and opened end to end
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReplyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// App id to connect as [default: latzero-cli-<pid>]
    #[arg(long, value_parser = app_id)]
    pub app: Option<String>,
    /// Pools to join (repeatable)
    #[arg(long = "pool", required = true, value_parser = pool_name)]
    pub pools: Vec<String>,
    /// Triggers to serve
    #[arg(required = true, value_parser = trigger_name)]
    pub triggers: Vec<String>,
    /// Answer every call with this JSON instead of echoing {"app_id","process","data"}
    #[arg(long, conflicts_with_all = ["error", "hang"])]
    pub respond: Option<String>,
    /// Answer every call with status "error" and this JSON
    #[arg(long, conflicts_with = "hang")]
    pub error: Option<String>,
    /// Wait this long before answering, ms
    #[arg(long, default_value_t = 0, conflicts_with = "hang")]
    pub delay_ms: u64,
    /// Never answer (to test timeouts and HANDLER_GONE)
    #[arg(long)]
    pub hang: bool,
    /// Take over a live connection with the same app id
    #[arg(long)]
    pub takeover: bool,
    /// The pool (one --pool) is encrypted: its keys, in this file (the lines `latzero keys generate` printed;
    /// in a file, not on the command line, where the process list shows it). The pool is joined
    /// by proving its SigilKey, and payloads are sealed and opened end to end
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

/// A count or a time that must be at least 1.
fn at_least_one<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    match s.parse::<T>() {
        Ok(n) if n == T::default() => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// An app id, as the protocol takes it (PROTOCOL.md §3.1): a bad one is refused naming its flag,
/// before anything connects.
fn app_id(s: &str) -> Result<String, NameError> {
    AppId::check(s).map(|()| s.to_owned())
}

/// An app id, or `*` for every member of the pool.
fn app_or_any(s: &str) -> Result<String, NameError> {
    if s == "*" { Ok(s.to_owned()) } else { app_id(s) }
}

/// A pool name, as the protocol takes it.
fn pool_name(s: &str) -> Result<String, NameError> {
    PoolName::check(s).map(|()| s.to_owned())
}

/// A trigger name, as the protocol takes it.
fn trigger_name(s: &str) -> Result<String, NameError> {
    TriggerName::check(s).map(|()| s.to_owned())
}

/// A block id, as the protocol takes it.
fn block_id(s: &str) -> Result<String, NameError> {
    BlockId::check(s).map(|()| s.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn a_count_or_a_time_of_zero_is_refused_by_name() {
        for args in [
            &["call", "--pool", "p", "t", "--count", "0"][..],
            &["call", "--pool", "p", "t", "--count", "2", "--concurrency", "0"],
            &["call", "--pool", "p", "t", "--timeout-ms", "0"],
            &["mem", "lock", "p", "b", "--lease-ms", "0"],
            &["mem", "watch", "p", "b", "--count", "0"],
            &["mem", "read", "p", "b", "--max", "0"],
        ] {
            let flag = args[args.len() - 2];
            let err = Cli::try_parse_from([&["latzero"][..], args].concat())
                .err()
                .unwrap_or_else(|| panic!("{args:?} was taken"))
                .to_string();
            assert!(err.contains(flag) && err.contains("must be at least 1"), "{err}");
            let mut one = args.to_vec();
            *one.last_mut().unwrap() = "1";
            assert!(
                Cli::try_parse_from([&["latzero"][..], &one].concat()).is_ok(),
                "{one:?}"
            );
        }
    }

    #[test]
    fn a_flag_that_would_go_unheeded_is_refused() {
        for (args, said) in [
            (&["call", "--pool", "p", "t", "--concurrency", "4"][..], "--count"),
            (&["call", "--pool", "p", "t", "--expect-echo"], "--count"),
            (
                &["call", "--pool", "p", "t", "--count", "2", "--expect-echo", "{}"],
                "[DATA]",
            ),
            (&["call", "--pool", "p", "t", "--broadcast", "--count", "2"], "--count"),
            (&["reply", "--pool", "p", "t", "--hang", "--delay-ms", "5"], "--hang"),
        ] {
            let err = Cli::try_parse_from([&["latzero"][..], args].concat())
                .err()
                .unwrap_or_else(|| panic!("{args:?} was taken"))
                .to_string();
            assert!(err.contains(said), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_bad_name_is_refused_by_its_flag_before_anything_connects() {
        for (args, flag, what) in [
            (&["call", "--pool", "p", "t$"][..], "<TRIGGER>", "trigger name"),
            (&["call", "--pool", "p$", "t"], "--pool", "pool name"),
            (&["call", "--pool", "p", "t", "--to", "a$"], "--to", "app id"),
            (&["emit", "--app", "a b", "--pool", "p", "t"], "--app", "app id"),
            (&["reply", "--pool", "p", "ok", "t$"], "<TRIGGERS>", "trigger name"),
            (&["mem", "stat", "p", "b$"], "<BLOCK>", "block id"),
            (
                &["mem", "create", "p", "b", "--size", "8", "--writers", "a,$"],
                "--writers",
                "app id",
            ),
            (&["pools", "create", "p", "--owners", "a,b$"], "--owners", "app id"),
            (&["keys", "rotate", "p$", "--app", "a"], "<POOL>", "pool name"),
        ] {
            let err = Cli::try_parse_from([&["latzero"][..], args].concat())
                .err()
                .unwrap_or_else(|| panic!("{args:?} was taken"))
                .to_string();
            assert!(err.contains(flag) && err.contains(what), "{err}");
        }
        // '*' is every member of the pool where apps are listed for a block.
        let ok = ["latzero", "mem", "create", "p", "b", "--size", "8", "--readers", "*,a"];
        assert!(Cli::try_parse_from(ok).is_ok());
    }
}
