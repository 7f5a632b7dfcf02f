//! What a handler receives and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytestring::ByteString;
use serde_json::{Value, json};

use crate::payload::Payload;

/// A trigger (or emit) delivered to a handler: `Request` (the payload as a [`Value`]) for
/// [`Client::handle`](crate::Client::handle), `Request<Payload>` (its JSON text, unparsed) for
/// [`Client::handle_raw`](crate::Client::handle_raw).
///
/// The names are [`ByteString`]s: text that dereferences to `&str` and compares with `&str`,
/// cut out of the frame the request arrived in, so a delivery copies none of them.
#[derive(Debug, Clone)]
pub struct Request<D = Value> {
    /// The trigger's name.
    pub process: ByteString,
    /// The pool it was called in.
    pub pool: ByteString,
    /// The payload.
    pub data: D,
    /// The calling app (`None` for an in-process call).
    pub origin: Option<ByteString>,
    /// True for an emit (fire-and-forget): the return value is discarded.
    pub is_emit: bool,
}

impl<D> Request<D> {
    /// A request for `process` in `pool` carrying `data`.
    pub(crate) fn new(
        process: ByteString,
        pool: ByteString,
        data: D,
        origin: Option<ByteString>,
        is_emit: bool,
    ) -> Self {
        Request {
            process,
            pool,
            data,
            origin,
            is_emit,
        }
    }
}

/// A handler's failure; sent to the caller as `status: "error"` with this value as `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError(pub Value);

impl HandlerError {
    /// An error `{"message": msg}`.
    pub fn msg(msg: impl std::fmt::Display) -> Self {
        HandlerError(json!({ "message": msg.to_string() }))
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::msg(e)
    }
}

pub(crate) type HandlerFuture<T = Value> = Pin<Box<dyn Future<Output = Result<T, HandlerError>> + Send>>;
/// A handler taking and returning `D` (a [`Value`] or a [`Payload`]).
pub(crate) type HandlerFn<D = Value> = Arc<dyn Fn(Request<D>) -> HandlerFuture<D> + Send + Sync>;

/// A registered handler, by the form it takes its payload in.
#[derive(Clone)]
pub(crate) enum Handler {
    /// [`Client::handle`](crate::Client::handle): a parsed [`Value`].
    Value(HandlerFn),
    /// [`Client::handle_raw`](crate::Client::handle_raw): the JSON text.
    Raw(HandlerFn<Payload>),
}

/// Runs a handler, turning a panic into a handler error instead of a lost reply.
pub(crate) async fn invoke<D>(h: HandlerFn<D>, req: Request<D>) -> Result<D, HandlerError> {
    let process = req.process.clone();
    invoke_boxed(h(req), &process).await
}

/// Finishes a handler's future, turning a panic into a handler error.
pub(crate) async fn invoke_boxed<T>(fut: HandlerFuture<T>, process: &str) -> Result<T, HandlerError> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(_) => Err(panicked(process)),
    }
}

/// The error a caller gets when the handler panicked.
pub(crate) fn panicked(process: &str) -> HandlerError {
    HandlerError::msg(format!("handler for '{process}' panicked"))
}
