//! What a handler receives and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Waker};

use compact_str::CompactString;
use serde_json::{Value, json};

use crate::payload::Payload;

/// A trigger (or emit) delivered to a handler: `Request` (the payload as a [`Value`]) for
/// [`Client::handle`](crate::Client::handle), `Request<Payload>` (its JSON text, unparsed) for
/// [`Client::handle_raw`](crate::Client::handle_raw).
///
/// The names are [`CompactString`]s: text that dereferences to `&str` and compares with
/// `&str`, held inline up to 24 bytes, so a delivery allocates none of them (and, unlike a
/// view into the frame, shares no reference count with it).
#[derive(Debug, Clone)]
pub struct Request<D = Value> {
    /// The trigger's name.
    pub process: CompactString,
    /// The pool it was called in.
    pub pool: CompactString,
    /// The payload.
    pub data: D,
    /// The calling app (`None` for an in-process call).
    pub origin: Option<CompactString>,
    /// True for an emit (fire-and-forget): the return value is discarded.
    pub is_emit: bool,
}

impl<D> Request<D> {
    /// A request for `process` in `pool` carrying `data`.
    pub(crate) fn new(
        process: CompactString,
        pool: CompactString,
        data: D,
        origin: Option<CompactString>,
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
pub(crate) type HandlerFn<D = Value> = Arc<dyn Start<D>>;

/// A handler, started on a request.
pub(crate) trait Start<D>: Send + Sync {
    /// Makes the handler's future for `req` and polls it once, right here: its result if it
    /// finished, else the rest of it, to run in a task.
    fn start(&self, req: Request<D>) -> Started<D>;
}

/// What [`Start::start`] left.
pub(crate) enum Started<D> {
    /// The handler finished on its first poll (most do: they never await).
    Done(Result<D, HandlerError>),
    /// The handler awaits something: the rest of its future.
    Waiting(HandlerFuture<D>),
}

/// `f` as a [`HandlerFn`].
pub(crate) fn handler_fn<D, F, Fut>(f: F) -> HandlerFn<D>
where
    D: Send + 'static,
    F: Fn(Request<D>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<D, HandlerError>> + Send + 'static,
{
    Arc::new(Recycling {
        f,
        spare: Mutex::new(None),
    })
}

/// A handler whose futures live in a box it keeps for the next request when they finish on
/// their first poll: a handler that never awaits costs no allocation per request (a malloc
/// and a free were ~220 instructions of a ~6,400-instruction pipelined call in the SDK). A
/// future polled once may not move (`Pin`), so it is polled where it will stay: in the box,
/// which goes with it to a task when it does await.
struct Recycling<F, Fut> {
    f: F,
    /// An empty box, left by the last future that finished on its first poll.
    spare: Mutex<Option<Pin<Box<Option<Fut>>>>>,
}

impl<D, F, Fut> Start<D> for Recycling<F, Fut>
where
    D: Send + 'static,
    F: Fn(Request<D>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<D, HandlerError>> + Send + 'static,
{
    fn start(&self, req: Request<D>) -> Started<D> {
        let fut = (self.f)(req);
        // One lock for the spare box, held through the first poll (two lock pairs were four
        // atomic operations per call, ~5 ns each: docs/BENCHMARKS.md, "Atomic operations"). A
        // start meanwhile — the handler calling its own trigger in-process, or another thread —
        // finds it held and boxes its future afresh, as the first start does.
        let mut spare = match self.spare.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut slot = spare.as_mut().and_then(|s| s.take()).unwrap_or_else(|| Box::pin(None));
        slot.set(Some(fut));
        // The first poll needs no waker: a future that is not ready goes to a task, which
        // polls it again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match slot.as_mut().as_pin_mut().map(|f| f.poll(&mut cx)) {
            Some(Poll::Ready(result)) => {
                slot.set(None);
                if let Some(spare) = &mut spare {
                    **spare = Some(slot);
                }
                Started::Done(result)
            }
            _ => Started::Waiting(Box::pin(Rest(slot))),
        }
    }
}

/// The rest of a handler's future, still in its box.
struct Rest<Fut>(Pin<Box<Option<Fut>>>);

impl<T, Fut: Future<Output = Result<T, HandlerError>>> Future for Rest<Fut> {
    type Output = Result<T, HandlerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut().as_pin_mut() {
            Some(f) => f.poll(cx),
            // `start` sets the future before it makes a `Rest`, and nothing takes it out.
            None => Poll::Ready(Err(HandlerError::msg("handler future missing"))),
        }
    }
}

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
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.start(req))) {
        Ok(Started::Done(result)) => result,
        Ok(Started::Waiting(rest)) => invoke_boxed(rest, &process).await,
        Err(_) => Err(panicked(&process)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: i64) -> Request {
        Request::new("t".into(), "p".into(), json!(n), None, false)
    }

    /// Where the spare box is, if the handler holds one.
    fn spare<F, Fut>(r: &Recycling<F, Fut>) -> Option<*const Option<Fut>> {
        r.spare.lock().unwrap().as_ref().map(|b| &**b as *const _)
    }

    #[tokio::test]
    async fn a_handler_that_finishes_at_once_reuses_one_box_and_one_that_awaits_takes_it_along() {
        let h = Recycling {
            f: |r: Request| async move {
                let n = r.data.as_i64().unwrap();
                if n < 0 {
                    tokio::task::yield_now().await;
                }
                Ok(json!(n * 2))
            },
            spare: Mutex::new(None),
        };
        let Started::Done(Ok(v)) = h.start(req(1)) else {
            panic!("not done at once")
        };
        assert_eq!(v, json!(2));
        let first = spare(&h).expect("the box kept");
        let Started::Done(Ok(v)) = h.start(req(2)) else {
            panic!("not done at once")
        };
        assert_eq!(v, json!(4));
        assert_eq!(spare(&h), Some(first), "the same box again");
        // One that awaits goes on in its box, and the next request gets a new one.
        let Started::Waiting(rest) = h.start(req(-3)) else {
            panic!("done without its await")
        };
        assert!(spare(&h).is_none());
        assert_eq!(rest.await.unwrap(), json!(-6));
        let Started::Done(Ok(v)) = h.start(req(5)) else {
            panic!("not done at once")
        };
        assert_eq!(v, json!(10));
        assert!(spare(&h).is_some());
    }

    /// `start` holds the spare box's lock through the first poll: a handler that calls its own
    /// trigger in-process within that poll must get a box of its own, not wait for the lock.
    #[test]
    fn a_handler_that_starts_itself_while_polled_gets_a_box_of_its_own() {
        static SELF: std::sync::OnceLock<HandlerFn> = std::sync::OnceLock::new();
        let h = handler_fn(|r: Request| async move {
            let n = r.data.as_i64().unwrap();
            if n == 0 {
                return Ok(json!(0));
            }
            let Started::Done(inner) = SELF.get().unwrap().start(req(n - 1)) else {
                panic!("not done at once")
            };
            Ok(json!(n + inner?.as_i64().unwrap()))
        });
        assert!(SELF.set(h.clone()).is_ok());
        let Started::Done(Ok(v)) = h.start(req(3)) else {
            panic!("not done at once")
        };
        assert_eq!(v, json!(3 + 2 + 1));
    }

    #[tokio::test]
    async fn a_handler_that_panicked_serves_the_next_request() {
        let h = handler_fn(|r: Request| async move {
            if r.data == json!(0) {
                panic!("zero");
            }
            Ok(r.data)
        });
        let e = invoke(h.clone(), req(0)).await.unwrap_err();
        assert!(e.0["message"].as_str().unwrap().contains("panicked"), "{e:?}");
        assert_eq!(invoke(h.clone(), req(7)).await.unwrap(), json!(7));
        assert_eq!(invoke(h, req(8)).await.unwrap(), json!(8));
    }
}
