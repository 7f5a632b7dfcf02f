//! Calls with options: the [`Call`] builder, and broadcast results.

use std::sync::Arc;
use std::time::Duration;

use latzero_proto::frame::{JsonFrame, ScratchFrame};
use latzero_proto::message::{RawValue, ServerFrame};
use latzero_proto::{AppId, ErrorCode, PoolName, TriggerName};
use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, remote_error};
use crate::error::{ClientError, RemoteError};
use crate::handler::{Handler, HandlerError, Request, invoke};
use crate::payload::Payload;
use crate::pending::{Reply, Want};

/// One handler's part of a broadcast result: its answer as a [`Value`] (from
/// [`Call::broadcast`]), or as the JSON text it wrote, a [`Payload`] (from
/// [`Call::broadcast_raw`]).
#[derive(Debug, Clone)]
pub struct BroadcastReply<D = Value> {
    /// The handler.
    pub app_id: String,
    /// Its result. A handler's own error ([`ClientError::Handler`]) is a value in either form.
    pub result: Result<D, Arc<ClientError>>,
}

/// A call being built. Finish with [`send`](Call::send), [`broadcast`](Call::broadcast) or
/// [`forward`](Call::forward).
#[derive(Debug)]
pub struct Call<'a> {
    pub(crate) client: &'a Client,
    pub(crate) pool: String,
    pub(crate) process: String,
    pub(crate) data: Result<Option<Box<RawValue>>, serde_json::Error>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) destination: Option<String>,
}

/// A `trigger` frame, with the payload serialised straight into it. The names must have been
/// checked (`PoolName::check` and friends): they are written without escaping.
pub(crate) struct TriggerOut<'a, D: Serialize + ?Sized> {
    pub id: u64,
    pub process: &'a str,
    pub pool: &'a str,
    pub data: &'a D,
    pub ttl: u64,
    pub destination: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub broadcast: bool,
}

impl<D: Serialize + ?Sized> TriggerOut<'_, D> {
    /// The frame, in this thread's scratch buffer until it is copied into the outbox (fails
    /// only if the payload does not serialise).
    pub fn encode(&self) -> Result<ScratchFrame, serde_json::Error> {
        // The payload's size is unknown until written; 192 bytes leave room for a small one.
        let mut f = JsonFrame::new(192 + self.process.len() + self.pool.len());
        // Names checked by the caller: nothing to escape. The keys and quotes between them go
        // in runs of the fixed layout the server reads first.
        f.text(r#""action":"trigger","id":"#)
            .digits(self.id)
            .text(r#","process":""#)
            .text(self.process)
            .text(r#"","pool":""#)
            .text(self.pool)
            .text("\"")
            .serialize("data", self.data)?
            .u64("ttl", self.ttl);
        if let Some(d) = self.destination {
            f.name("destination", d);
        }
        if let Some(r) = self.reply_to {
            f.name("reply_to", r);
        }
        if self.broadcast {
            f.bool("broadcast", true);
        }
        Ok(f.finish_scratch())
    }
}

/// The two forms a payload takes in the SDK: a parsed [`Value`], or its text ([`Payload`]).
pub(crate) trait Form: Sized + Send + 'static {
    /// The form a reply is asked for in.
    const WANT: Want;
    /// The result a reply in that form carries (`None` for a reply in another form).
    fn from_reply(r: Reply) -> Option<Result<Self, ClientError>>;
    fn from_json<T: Serialize + ?Sized>(data: &T) -> Result<Self, ClientError>;
    fn into_value(self) -> Result<Value, ClientError>;
    fn into_payload(self) -> Result<Payload, ClientError>;
    fn from_value(v: Value) -> Result<Self, ClientError>;
    fn from_payload(p: Payload) -> Result<Self, ClientError>;
}

impl Form for Value {
    const WANT: Want = Want::Value;
    fn from_reply(r: Reply) -> Option<Result<Self, ClientError>> {
        match r {
            Reply::Value(v) => Some(v),
            _ => None,
        }
    }
    fn from_json<T: Serialize + ?Sized>(data: &T) -> Result<Self, ClientError> {
        Ok(serde_json::to_value(data)?)
    }
    fn into_value(self) -> Result<Value, ClientError> {
        Ok(self)
    }
    fn into_payload(self) -> Result<Payload, ClientError> {
        Ok(Payload::from_json(&self)?)
    }
    fn from_value(v: Value) -> Result<Self, ClientError> {
        Ok(v)
    }
    fn from_payload(p: Payload) -> Result<Self, ClientError> {
        Ok(p.json()?)
    }
}

impl Form for Payload {
    const WANT: Want = Want::Raw;
    fn from_reply(r: Reply) -> Option<Result<Self, ClientError>> {
        match r {
            Reply::Raw(p) => Some(p),
            _ => None,
        }
    }
    fn from_json<T: Serialize + ?Sized>(data: &T) -> Result<Self, ClientError> {
        Ok(Payload::from_json(data)?)
    }
    fn into_value(self) -> Result<Value, ClientError> {
        Ok(self.json()?)
    }
    fn into_payload(self) -> Result<Payload, ClientError> {
        Ok(self)
    }
    fn from_value(v: Value) -> Result<Self, ClientError> {
        Ok(Payload::from_json(&v)?)
    }
    fn from_payload(p: Payload) -> Result<Self, ClientError> {
        Ok(p)
    }
}

/// Runs a call on this client's own handler, in-process (the seeds' short-circuit): the payload
/// goes to the handler in the form it takes, and its result comes back in the form `D` the
/// caller asked for.
pub(crate) async fn run_local<D: Form>(
    app_id: &str,
    h: Handler,
    pool: &str,
    process: &str,
    data: D,
    ttl: Duration,
) -> Result<D, ClientError> {
    // In-process: no origin, never an emit. A handler's error stays its own value; only its
    // success changes form.
    let run = async {
        Ok::<_, ClientError>(match h {
            Handler::Value(f) => invoke(
                f,
                Request::new(process.into(), pool.into(), data.into_value()?, None, false),
            )
            .await
            .map(D::from_value),
            Handler::Raw(f) => invoke(
                f,
                Request::new(process.into(), pool.into(), data.into_payload()?, None, false),
            )
            .await
            .map(D::from_payload),
        })
    };
    match tokio::time::timeout(ttl, run).await {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(HandlerError(e)))) => Err(ClientError::Handler(e)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RemoteError {
            code: ErrorCode::Timeout,
            message: format!(
                "in-process call timed out after {} ms; the handler may still run it",
                ttl.as_millis()
            ),
            handler: Some(app_id.to_owned()),
            handler_may_still_run: Some(true),
        }
        .into()),
    }
}

impl Call<'_> {
    /// The payload (any `Serialize`; default `null`).
    pub fn data<T: Serialize + ?Sized>(mut self, data: &T) -> Self {
        self.data = serde_json::value::to_raw_value(data).map(Some);
        self
    }

    /// This call's timeout (sent as `ttl`), instead of the client's default; rounded up to
    /// whole milliseconds (the wire's unit), at least 1 ms.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(crate::options::wire_ttl(d));
        self
    }

    /// Run the call on this app.
    pub fn destination(mut self, app: &str) -> Self {
        self.destination = Some(app.to_owned());
        self
    }

    fn frame(&self, id: u64, data: &RawValue, ttl: Duration, reply_to: Option<&str>, broadcast: bool) -> ScratchFrame {
        TriggerOut {
            id,
            process: &self.process,
            pool: &self.pool,
            data,
            ttl: ttl.as_millis() as u64,
            destination: self.destination.as_deref(),
            reply_to,
            broadcast,
        }
        .encode()
        // The payload is already JSON text.
        .expect("serialising a raw value into memory")
    }

    fn ttl(&self) -> Duration {
        self.timeout.unwrap_or_else(|| self.client.inner.default_ttl())
    }

    fn check(&self) -> Result<(), ClientError> {
        PoolName::check(&self.pool)?;
        TriggerName::check(&self.process)?;
        if let Some(d) = &self.destination {
            AppId::check(d)?;
        }
        Ok(())
    }

    /// Sends the call and waits for its result.
    pub async fn send(self) -> Result<Value, ClientError> {
        self.send_as().await
    }

    /// Sends the call and waits for its result as JSON text, unparsed (see [`Payload`]).
    pub async fn send_raw(self) -> Result<Payload, ClientError> {
        self.send_as().await
    }

    pub(crate) async fn send_as<D: Form>(mut self) -> Result<D, ClientError> {
        self.check()?;
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let inner = &self.client.inner;
        let local = self.destination.as_deref().is_none_or(|d| d == inner.app_id.as_str());
        if local && let Some(h) = inner.local_handler(&self.pool, &self.process) {
            let data = D::from_payload(data.map_or_else(Payload::null, Payload::from))?;
            return run_local(inner.app_id.as_str(), h, &self.pool, &self.process, data, self.ttl()).await;
        }
        let ttl = self.ttl();
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        inner
            .roundtrip_as(|id| Ok(self.frame(id, data, ttl, None, false)), ttl)
            .await
    }

    /// Sends the call to every handler of the trigger in the pool; returns one result per
    /// handler once all have answered or timed out.
    pub async fn broadcast(self) -> Result<Vec<BroadcastReply>, ClientError> {
        self.broadcast_as().await
    }

    /// [`broadcast`](Self::broadcast) with each answer as the JSON text its handler wrote
    /// ([`Payload`]), never read into a value (an integer past 64 bits keeps its digits).
    pub async fn broadcast_raw(self) -> Result<Vec<BroadcastReply<Payload>>, ClientError> {
        self.broadcast_as().await
    }

    pub(crate) async fn broadcast_as<D: Form>(mut self) -> Result<Vec<BroadcastReply<D>>, ClientError> {
        self.check()?;
        let ttl = self.ttl();
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        let frame = self
            .client
            .inner
            .roundtrip_frame(|id| Ok(self.frame(id, data, ttl, None, true)), ttl)
            .await?;
        let env = ServerFrame::parse(&frame).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))?;
        if env.action() == Some("error") {
            return Err(remote_error(&env).into());
        }
        let bad = |e: serde_json::Error| ClientError::Protocol(format!("bad broadcast reply: {e}"));
        let list: Responses<'_> = serde_json::from_slice(&frame).map_err(bad)?;
        Ok(list.responses.into_iter().map(broadcast_entry).collect())
    }

    /// Sends the call with its result going to another app (`reply_to`), which receives it as
    /// [`ClientEvent::Forwarded`](crate::ClientEvent::Forwarded). Returns the app that is running the call once the server
    /// has handed it over.
    pub async fn forward(mut self, reply_to: &str) -> Result<String, ClientError> {
        self.check()?;
        AppId::check(reply_to)?;
        let ttl = self.ttl();
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        let v = self
            .client
            .inner
            .roundtrip(|id| Ok(self.frame(id, data, ttl, Some(reply_to), false)), ttl)
            .await?;
        Ok(v["handler"].as_str().unwrap_or_default().to_owned())
    }
}

/// A broadcast's answer frame, as far as [`Call::broadcast`] reads it.
#[derive(serde::Deserialize)]
struct Responses<'a> {
    #[serde(borrow)]
    responses: Vec<Entry<'a>>,
}

/// One handler's entry (docs/PROTOCOL.md, "broadcast"): its answer's text as it came.
#[derive(serde::Deserialize)]
struct Entry<'a> {
    #[serde(default)]
    app_id: String,
    #[serde(default, borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    response: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Value>,
    /// A code this SDK does not know reads as `INTERNAL`.
    #[serde(default, borrow)]
    code: Option<&'a RawValue>,
    #[serde(default)]
    message: Option<String>,
}

fn broadcast_entry<D: Form>(e: Entry<'_>) -> BroadcastReply<D> {
    // A `null` answer reads as no `response`.
    let answer = || D::from_payload(Payload::from_text(e.response.map_or("null", RawValue::get).to_owned())?);
    let result = match (e.status.as_deref(), e.code) {
        (Some("ok"), _) => answer().map_err(Arc::new),
        (_, Some(code)) => Err(Arc::new(ClientError::Remote(RemoteError {
            code: serde_json::from_str(code.get()).unwrap_or(ErrorCode::Internal),
            message: e.message.unwrap_or_default(),
            handler: Some(e.app_id.clone()),
            handler_may_still_run: None,
        }))),
        _ => Err(Arc::new(ClientError::Handler(e.error.unwrap_or(Value::Null)))),
    };
    BroadcastReply {
        app_id: e.app_id,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &ScratchFrame) -> &str {
        std::str::from_utf8(&f[4..]).unwrap()
    }

    #[test]
    fn a_trigger_frame_is_in_the_layout_the_server_reads_first() {
        // The texts latzero-proto's tests hand to the server's layout reader (`sdk_call`).
        let t = TriggerOut {
            id: 7,
            process: "echo",
            pool: "p",
            data: &Payload::from_json("x").unwrap(),
            ttl: 30000,
            destination: None,
            reply_to: None,
            broadcast: false,
        };
        let f = t.encode().unwrap();
        assert_eq!(
            text(&f),
            r#"{"action":"trigger","id":7,"process":"echo","pool":"p","data":"x","ttl":30000}"#
        );
        assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        // With every option, and a payload serde has to escape.
        let data = serde_json::json!({"k": "a\"b"});
        let t = TriggerOut {
            data: &data,
            destination: Some("h"),
            reply_to: Some("r"),
            broadcast: true,
            id: t.id,
            process: t.process,
            pool: t.pool,
            ttl: t.ttl,
        };
        assert_eq!(
            text(&t.encode().unwrap()),
            r#"{"action":"trigger","id":7,"process":"echo","pool":"p","data":{"k":"a\"b"},"ttl":30000,"destination":"h","reply_to":"r","broadcast":true}"#
        );
    }
}
