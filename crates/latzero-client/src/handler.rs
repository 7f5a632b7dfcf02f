//! What a handler receives and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};

/// A trigger (or emit) delivered to a handler.
#[derive(Debug, Clone)]
pub struct Request {
    /// The trigger's name.
    pub process: String,
    /// The pool it was called in.
    pub pool: String,
    /// The payload.
    pub data: Value,
    /// The calling app (`None` for an in-process call).
    pub origin: Option<String>,
    /// True for an emit (fire-and-forget): the return value is discarded.
    pub is_emit: bool,
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

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;
pub(crate) type HandlerFn = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// Runs a handler, turning a panic into a handler error instead of a lost reply.
pub(crate) async fn invoke(h: HandlerFn, req: Request) -> Result<Value, HandlerError> {
    let process = req.process.clone();
    invoke_boxed(h(req), &process).await
}

/// Finishes a handler's future, turning a panic into a handler error.
pub(crate) async fn invoke_boxed(fut: HandlerFuture, process: &str) -> Result<Value, HandlerError> {
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
