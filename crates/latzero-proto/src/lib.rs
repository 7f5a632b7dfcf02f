//! The LatZero wire format, and nothing else: no sockets, no server state.
//!
//! - [`frame`]: the 4-byte big-endian length prefix, JSON and binary frames, the codec.
//! - [`message`]: the messages clients send (parsed at the edge into typed requests) and the
//!   frames the server sends back.
//! - [`error`]: the error codes every error frame carries.
//! - [`name`]: validated names (app ids, pools, triggers).
//! - [`url`]: the `latzero://APP_ID` URL.
//! - [`seed`]: the original design's protocol examples, which must keep working verbatim.
//!
//! docs/PROTOCOL.md is the normative description; this crate implements it.

pub mod error;
pub mod frame;
pub mod message;
pub mod name;
pub mod seed;
pub mod url;

pub use error::ErrorCode;
pub use frame::{DEFAULT_MAX_FRAME_LEN, ENVELOPE_ROOM, Frame, FrameCodec, FrameError};
pub use name::{AppId, BlockId, NameError, PoolName, TriggerName};
pub use url::{Endpoint, LatzeroUrl, TlsVerify, UrlError, format_fingerprint, parse_fingerprint};

/// The protocol version this crate speaks, `MAJOR.MINOR`. Peers with the same major interoperate.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The major part of [`PROTOCOL_VERSION`].
pub const PROTOCOL_MAJOR: u32 = 1;
/// Default TCP port of the server.
pub const DEFAULT_PORT: u16 = 45227;
/// Default host of the server.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// File name of the Unix domain socket inside the data directory.
pub const UNIX_SOCKET_NAME: &str = "latzero.sock";
