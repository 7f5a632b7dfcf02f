//! Error codes carried by every `error` frame. The table with meanings is in docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A machine-readable error code. Serialised as SCREAMING_SNAKE_CASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No app in the pool registered the trigger (sent at once, never after a wait).
    NoHandler,
    /// The call's deadline passed before a response arrived.
    Timeout,
    /// The handler disconnected while the call was in flight.
    HandlerGone,
    /// The caller, the destination or the reply target is not a member of the pool.
    NotInPool,
    /// The message is not valid: bad JSON, a missing or ill-typed field.
    InvalidMessage,
    /// A name (app id, pool, trigger) is not valid.
    InvalidName,
    /// The frame is longer than the configured maximum; the connection is closed.
    FrameTooLarge,
    /// The `action` is not one the server knows.
    UnknownAction,
    /// A limit was hit (in-flight calls, a receiver's queue); retry later.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// Another live connection already uses this app id.
    DuplicateApp,
    /// The message needs a handshake first.
    HandshakeRequired,
    /// The client speaks an incompatible protocol major version.
    UnsupportedVersion,
    /// A response names a call this connection was not asked to answer.
    UnknownCall,
    /// No block with that id in the pool.
    BlockNotFound,
    /// A block with that id already exists in the pool.
    BlockExists,
    /// An offset or length outside the block (or a document or record larger than it).
    OutOfRange,
    /// A block size of 0 or above the configured maximum.
    InvalidSize,
    /// The operation does not apply to the block's type.
    WrongType,
    /// A json block's write that is not one valid JSON document.
    InvalidJson,
    /// The app is not on the block's read or write list.
    PermissionDenied,
    /// A sealed record appended to a stream in an encrypted pool was not sealed after the
    /// stream's newest: a replay, or sealed before another writer's append landed. Seal it again.
    StaleRecord,
    /// Another app holds a lock on the block that the operation conflicts with.
    Locked,
    /// A lock was not granted within the wait asked for.
    LockTimeout,
    /// An unlock from an app that holds no lock on the block.
    NotLocked,
    /// A stream block (policy `error`) is full until its slowest consumer reads.
    StreamFull,
    /// The block's pages could not be allocated (disk or /dev/shm full).
    NoSpace,
    /// A block's write side stayed taken longer than the server waits.
    Busy,
    /// No pool of that name (for update: no stored pool; create it first).
    PoolNotFound,
    /// `pool_create` for a pool that is already stored.
    PoolExists,
    /// `pool_remove` while other apps are in the pool, without `force`.
    PoolInUse,
    /// `app_remove` for an app id with no stored registration.
    AppNotFound,
    /// `app_remove` for an app that is connected now.
    AppConnected,
    /// The credential is missing, wrong, expired, or names another app; the connection is closed
    /// (except when it only refuses an admin request after the app's handshake).
    AuthFailed,
    /// A plain (non-TLS) connection to a port that serves TLS; the connection is closed.
    TlsRequired,
    /// The feature exists in the protocol but is not available in this server yet.
    NotAvailable,
    /// A bug in the server; the message says what failed. Clients also map codes they do not
    /// know (from a newer server) to it.
    Internal,
}

impl ErrorCode {
    /// The wire spelling, e.g. `NO_HANDLER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoHandler => "NO_HANDLER",
            Self::Timeout => "TIMEOUT",
            Self::HandlerGone => "HANDLER_GONE",
            Self::NotInPool => "NOT_IN_POOL",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::InvalidName => "INVALID_NAME",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::UnknownAction => "UNKNOWN_ACTION",
            Self::Overloaded => "OVERLOADED",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::DuplicateApp => "DUPLICATE_APP",
            Self::HandshakeRequired => "HANDSHAKE_REQUIRED",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::UnknownCall => "UNKNOWN_CALL",
            Self::BlockNotFound => "BLOCK_NOT_FOUND",
            Self::BlockExists => "BLOCK_EXISTS",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::InvalidSize => "INVALID_SIZE",
            Self::WrongType => "WRONG_TYPE",
            Self::InvalidJson => "INVALID_JSON",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::StaleRecord => "STALE_RECORD",
            Self::Locked => "LOCKED",
            Self::LockTimeout => "LOCK_TIMEOUT",
            Self::NotLocked => "NOT_LOCKED",
            Self::StreamFull => "STREAM_FULL",
            Self::NoSpace => "NO_SPACE",
            Self::Busy => "BUSY",
            Self::PoolNotFound => "POOL_NOT_FOUND",
            Self::PoolExists => "POOL_EXISTS",
            Self::PoolInUse => "POOL_IN_USE",
            Self::AppNotFound => "APP_NOT_FOUND",
            Self::AppConnected => "APP_CONNECTED",
            Self::AuthFailed => "AUTH_FAILED",
            Self::TlsRequired => "TLS_REQUIRED",
            Self::NotAvailable => "NOT_AVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// Every code, in the order of the table in docs/PROTOCOL.md.
    pub const ALL: [ErrorCode; 37] = [
        Self::NoHandler,
        Self::Timeout,
        Self::HandlerGone,
        Self::NotInPool,
        Self::InvalidMessage,
        Self::InvalidName,
        Self::FrameTooLarge,
        Self::UnknownAction,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::DuplicateApp,
        Self::HandshakeRequired,
        Self::UnsupportedVersion,
        Self::UnknownCall,
        Self::BlockNotFound,
        Self::BlockExists,
        Self::OutOfRange,
        Self::InvalidSize,
        Self::WrongType,
        Self::InvalidJson,
        Self::PermissionDenied,
        Self::StaleRecord,
        Self::Locked,
        Self::LockTimeout,
        Self::NotLocked,
        Self::StreamFull,
        Self::NoSpace,
        Self::Busy,
        Self::PoolNotFound,
        Self::PoolExists,
        Self::PoolInUse,
        Self::AppNotFound,
        Self::AppConnected,
        Self::AuthFailed,
        Self::TlsRequired,
        Self::NotAvailable,
        Self::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md §11 lists every code, in `ALL`'s order, and nothing else.
    #[test]
    fn the_protocol_documents_every_code_in_order() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let table = doc
            .split("## 11. Error codes")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("PROTOCOL.md has section 11");
        let documented: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, codes);
    }

    #[test]
    fn serde_spelling_matches_as_str() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.as_str()));
            let back: ErrorCode = serde_json::from_str(&format!("\"{c}\"")).unwrap();
            assert_eq!(back, c);
        }
    }
}
