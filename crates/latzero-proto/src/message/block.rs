//! Memory-block requests (docs/PROTOCOL.md §7). They are parsed from their own set of fields,
//! in a second pass that only block actions pay for; the RPC envelope stays as small as it is.

use serde::Deserialize;

use super::request::{ParseError, bad_name, invalid};
use super::{RawValue, Str};
use crate::name::{AppId, BlockId, NameError, PoolName};

/// The most records one `block_read` of a stream may ask for (its `max`; §7.4).
pub const MAX_STREAM_READ: usize = 100_000;

/// The block actions, as sent in `action`.
pub const BLOCK_ACTIONS: [&str; 12] = [
    "block_create",
    "block_attach",
    "block_read",
    "block_write",
    "block_lock",
    "block_unlock",
    "block_watch",
    "block_unwatch",
    "block_notify",
    "block_delete",
    "block_list",
    "block_stat",
];

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    /// Raw bytes.
    Binary,
    /// One JSON document.
    Json,
    /// A ring of records.
    Stream,
}

impl BlockType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockType::Binary => "binary",
            BlockType::Json => "json",
            BlockType::Stream => "stream",
        }
    }
}

/// Who may read and who may write a block: app ids, or `*` for every member of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Apps that may attach for reading and read.
    pub read: Vec<String>,
    /// Apps that may attach for writing, write, lock exclusively and delete.
    pub write: Vec<String>,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            read: vec!["*".into()],
            write: vec!["*".into()],
        }
    }
}

impl Permissions {
    /// Whether `app` may read.
    pub fn may_read(&self, app: &str) -> bool {
        self.may_write(app) || self.read.iter().any(|a| a == "*" || a == app)
    }

    /// Whether `app` may write.
    pub fn may_write(&self, app: &str) -> bool {
        self.write.iter().any(|a| a == "*" || a == app)
    }
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders; writes by others are refused while it is held.
    Shared,
    /// One holder; everyone else's writes and locks are refused.
    Exclusive,
}

impl LockMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// A block request: the block it names and what to do.
#[derive(Debug)]
pub struct BlockRequest<'a> {
    /// The pool (every block action but `block_list` names one block in one pool).
    pub pool: PoolName,
    /// The block (`None` only for `block_list`).
    pub block_id: Option<BlockId>,
    /// The operation.
    pub op: BlockOp<'a>,
}

/// What to do with a block.
#[derive(Debug)]
pub enum BlockOp<'a> {
    /// Create it.
    Create {
        /// Data bytes.
        size: u64,
        /// Its type.
        kind: BlockType,
        /// Keep it (and its content) across server restarts.
        persistent: bool,
        /// Read/write lists.
        permissions: Permissions,
        /// Stream: drop the oldest records when full (else refuse appends).
        overwrite: bool,
    },
    /// Get the file to map.
    Attach {
        /// `Some(true)` to map for writing, `Some(false)` for reading, `None` for the widest
        /// mode the app is allowed.
        write: Option<bool>,
    },
    /// Read bytes (binary), the document (json) or records (stream).
    Read {
        /// Binary: where to start.
        offset: u64,
        /// Binary: how many bytes (default: to the end).
        length: Option<u64>,
        /// Stream: the consumer whose cursor to read from (registered on first use).
        consumer: Option<Str<'a>>,
        /// Stream: most records to return.
        max: Option<usize>,
        /// Send the bytes as base64 in a JSON frame instead of a binary frame.
        base64: bool,
    },
    /// Write bytes (binary), replace the document (json) or append a record (stream).
    Write {
        /// Binary: where to write.
        offset: u64,
        /// The bytes as base64 (else the binary frame's body).
        data: Option<Str<'a>>,
        /// Json: the document, inline.
        document: Option<&'a RawValue>,
    },
    /// Take a lock lease.
    Lock {
        /// Shared or exclusive.
        mode: LockMode,
        /// How long the lease lasts unless renewed or released.
        lease_ms: Option<u64>,
        /// How long to wait for it (0: fail at once with LOCKED).
        wait_ms: Option<u64>,
    },
    /// Release this app's lock.
    Unlock,
    /// Subscribe to changes.
    Watch {
        /// The last version the watcher saw; it is told at once if it is behind.
        since: Option<u64>,
        /// When the block the watcher saw was created (its `created_at`, from `synced`): a
        /// block of that name created at another time is another block, and the watcher is
        /// behind whatever the versions say.
        created_at: Option<u64>,
    },
    /// Stop watching.
    Unwatch,
    /// A local writer reports a write it made through its mapping.
    Notify {
        /// The version its write produced.
        version: u64,
        /// Where it wrote.
        offset: u64,
        /// How many bytes.
        length: u64,
    },
    /// Remove the block and its file.
    Delete,
    /// Blocks of a pool.
    List,
    /// One block's metadata and state.
    Stat,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    pool: Option<Str<'a>>,
    #[serde(borrow)]
    block_id: Option<Str<'a>>,
    size: Option<u64>,
    #[serde(borrow, rename = "type")]
    kind: Option<Str<'a>>,
    persistent: Option<bool>,
    permissions: Option<super::Obj<PermFields>>,
    #[serde(borrow)]
    overflow: Option<Str<'a>>,
    #[serde(borrow)]
    mode: Option<Str<'a>>,
    offset: Option<u64>,
    length: Option<u64>,
    #[serde(borrow)]
    consumer: Option<Str<'a>>,
    max: Option<usize>,
    #[serde(borrow)]
    encoding: Option<Str<'a>>,
    #[serde(borrow)]
    data: Option<Str<'a>>,
    #[serde(borrow)]
    document: Option<&'a RawValue>,
    lease_ms: Option<u64>,
    wait_ms: Option<u64>,
    since: Option<u64>,
    created_at: Option<u64>,
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermFields {
    read: Option<Vec<String>>,
    write: Option<Vec<String>>,
}

fn one_of<'a>(
    v: Option<&str>,
    field: &str,
    allowed: &[&'static str],
    id: Option<&'a RawValue>,
) -> Result<Option<&'static str>, ParseError<'a>> {
    match v {
        None => Ok(None),
        Some(s) => allowed.iter().find(|a| **a == s).copied().map(Some).ok_or_else(|| {
            invalid(
                id,
                format!("field `{field}` must be one of {}, got \"{s}\"", allowed.join(", ")),
            )
        }),
    }
}

fn name<'a, T: for<'s> TryFrom<&'s str, Error = NameError>>(
    v: Option<&str>,
    field: &str,
    id: Option<&'a RawValue>,
) -> Result<T, ParseError<'a>> {
    let v = v.ok_or_else(|| invalid(id, format!("missing field `{field}`")))?;
    T::try_from(v).map_err(|e| bad_name(id, field, e))
}

fn app_list<'a>(
    list: Option<Vec<String>>,
    field: &str,
    id: Option<&'a RawValue>,
) -> Result<Vec<String>, ParseError<'a>> {
    let list = list.unwrap_or_else(|| vec!["*".into()]);
    for a in &list {
        if a != "*" {
            AppId::check(a).map_err(|e| bad_name(id, field, e))?;
        }
    }
    Ok(list)
}

/// Parses a block action's fields. `action` is one of [`BLOCK_ACTIONS`].
pub(crate) fn parse_block<'a>(
    action: &str,
    json: &'a [u8],
    id: Option<&'a RawValue>,
) -> Result<BlockRequest<'a>, ParseError<'a>> {
    // The plain parse is the fast path; only a failure pays for locating the bad field.
    let f: Fields<'a> = match serde_json::from_slice(json) {
        Ok(f) => f,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(json);
            match serde_path_to_error::deserialize::<_, Fields<'a>>(&mut de) {
                Ok(f) => f,
                Err(e) => return Err(invalid(id, format!("field `{}`: {}", e.path(), e.inner()))),
            }
        }
    };
    let pool: PoolName = name(f.pool.as_deref(), "pool", id)?;
    if action == "block_list" {
        return Ok(BlockRequest {
            pool,
            block_id: None,
            op: BlockOp::List,
        });
    }
    let block_id: BlockId = name(f.block_id.as_deref(), "block_id", id)?;
    let op = match action {
        "block_create" => {
            let size = f.size.ok_or_else(|| invalid(id, "missing field `size` (bytes)"))?;
            let kind = match one_of(f.kind.as_deref(), "type", &["binary", "json", "stream"], id)? {
                None | Some("binary") => BlockType::Binary,
                Some("json") => BlockType::Json,
                _ => BlockType::Stream,
            };
            let overflow = one_of(f.overflow.as_deref(), "overflow", &["error", "overwrite"], id)?;
            if overflow.is_some() && kind != BlockType::Stream {
                return Err(invalid(id, "field `overflow` applies to stream blocks only"));
            }
            let permissions = match f.permissions {
                None => Permissions::default(),
                Some(super::Obj(p)) => Permissions {
                    read: app_list(p.read, "permissions.read", id)?,
                    write: app_list(p.write, "permissions.write", id)?,
                },
            };
            BlockOp::Create {
                size,
                kind,
                persistent: f.persistent.unwrap_or(false),
                permissions,
                overwrite: overflow == Some("overwrite"),
            }
        }
        "block_attach" => BlockOp::Attach {
            write: one_of(f.mode.as_deref(), "mode", &["read", "write"], id)?.map(|m| m == "write"),
        },
        "block_read" => BlockOp::Read {
            offset: f.offset.unwrap_or(0),
            length: f.length,
            consumer: f.consumer,
            max: f.max,
            base64: one_of(f.encoding.as_deref(), "encoding", &["binary", "base64"], id)? == Some("base64"),
        },
        "block_write" => BlockOp::Write {
            offset: f.offset.unwrap_or(0),
            data: f.data,
            document: f.document,
        },
        "block_lock" => BlockOp::Lock {
            mode: match one_of(f.mode.as_deref(), "mode", &["shared", "exclusive"], id)? {
                Some("shared") => LockMode::Shared,
                _ => LockMode::Exclusive,
            },
            lease_ms: f.lease_ms,
            wait_ms: f.wait_ms,
        },
        "block_unlock" => BlockOp::Unlock,
        "block_watch" => BlockOp::Watch {
            since: f.since,
            created_at: f.created_at,
        },
        "block_unwatch" => BlockOp::Unwatch,
        "block_notify" => BlockOp::Notify {
            version: f.version.ok_or_else(|| invalid(id, "missing field `version`"))?,
            offset: f.offset.unwrap_or(0),
            length: f.length.unwrap_or(0),
        },
        "block_delete" => BlockOp::Delete,
        "block_stat" => BlockOp::Stat,
        other => unreachable!("{other} is not in BLOCK_ACTIONS"),
    };
    Ok(BlockRequest {
        pool,
        block_id: Some(block_id),
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::message::{Request, parse_request};

    fn parse(json: &str) -> Result<BlockRequest<'_>, (ErrorCode, String)> {
        match parse_request(json.as_bytes()) {
            Ok(p) => match p.request {
                Request::Block(b) => Ok(b),
                other => panic!("not a block request: {other:?}"),
            },
            Err(e) => Err((e.code, e.message)),
        }
    }

    #[test]
    fn create_with_defaults_and_in_full() {
        let b = parse(r#"{"action":"block_create","id":1,"pool":"p","block_id":"b","size":4096}"#).unwrap();
        assert_eq!(b.block_id.unwrap().as_str(), "b");
        match b.op {
            BlockOp::Create {
                size: 4096,
                kind: BlockType::Binary,
                persistent: false,
                permissions,
                overwrite: false,
            } => assert_eq!(permissions, Permissions::default()),
            other => panic!("{other:?}"),
        }
        let b = parse(
            r#"{"action":"block_create","pool":"p","block_id":"s","size":64,"type":"stream","overflow":"overwrite",
                "persistent":true,"permissions":{"read":["*"],"write":["w1"]}}"#,
        )
        .unwrap();
        match b.op {
            BlockOp::Create {
                kind: BlockType::Stream,
                persistent: true,
                overwrite: true,
                permissions,
                ..
            } => {
                assert!(permissions.may_write("w1") && !permissions.may_write("w2"));
                assert!(permissions.may_read("w2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permissions_are_an_object_of_read_and_write_only() {
        // An array would be read positionally as read and write; a misspelt key would leave
        // the block writable by every member.
        for perms in [r#"[["a"],["a"]]"#, "[]", r#"{"read":["a"],"wirte":["a"]}"#] {
            let req =
                format!(r#"{{"action":"block_create","pool":"p","block_id":"b","size":8,"permissions":{perms}}}"#);
            let (code, msg) = parse(&req).unwrap_err();
            assert_eq!(code, ErrorCode::InvalidMessage, "{perms}");
            assert!(msg.contains("permissions"), "{perms}: {msg}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let (code, msg) = parse(r#"{"action":"block_create","id":1,"pool":"p","block_id":"b"}"#).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidMessage);
        assert!(msg.contains("size"), "{msg}");
        let (_, msg) =
            parse(r#"{"action":"block_create","pool":"p","block_id":"b","size":1,"type":"blob"}"#).unwrap_err();
        assert!(msg.contains("binary, json, stream"), "{msg}");
        let (_, msg) = parse(r#"{"action":"block_read","pool":"p","block_id":"b","offset":-1}"#).unwrap_err();
        assert!(msg.contains("offset"), "{msg}");
        let (code, _) = parse(r#"{"action":"block_stat","pool":"p","block_id":".."}"#).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidName);
        let (code, msg) =
            parse(r#"{"action":"block_create","pool":"p","block_id":"b","size":1,"permissions":{"write":["a b"]}}"#)
                .unwrap_err();
        assert_eq!(code, ErrorCode::InvalidName);
        assert!(msg.contains("permissions.write"), "{msg}");
        let (_, msg) =
            parse(r#"{"action":"block_create","pool":"p","block_id":"b","size":1,"overflow":"error"}"#).unwrap_err();
        assert!(msg.contains("stream blocks only"), "{msg}");
        let (_, msg) = parse(r#"{"action":"block_notify","pool":"p","block_id":"b"}"#).unwrap_err();
        assert!(msg.contains("version"), "{msg}");
    }

    #[test]
    fn list_needs_only_a_pool() {
        let b = parse(r#"{"action":"block_list","id":"l","pool":"p"}"#).unwrap();
        assert!(b.block_id.is_none() && matches!(b.op, BlockOp::List));
    }
}
