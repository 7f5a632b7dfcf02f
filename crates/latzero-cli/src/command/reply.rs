//! `latzero reply`: serve triggers from the command line. Prints one JSON line per event on
//! stdout — `ready` once the handshake is done, then `call` and `emit` as they arrive — so
//! scripts and tests can synchronise on it.

use std::time::Duration;

use anyhow::{Result, bail};
use latzero_client::{ClientEvent, ClientOptions, HandlerError, Payload, Request};
use serde::Serialize;
use serde_json::json;

/// A `call` or `emit` line. Written as text, so `data` is the caller's JSON as it came (a value
/// read and written again would change an integer past 64 bits, or a decimal past a double's
/// precision). In an encrypted pool, the payload as opened.
#[derive(Serialize)]
struct Event<'a, D> {
    event: &'a str,
    process: &'a str,
    pool: &'a str,
    data: &'a D,
    origin: Option<&'a str>,
}

/// The default answer: the request echoed, `data` as it came.
#[derive(Serialize)]
struct Echo<'a, D> {
    app_id: &'a str,
    process: &'a str,
    data: &'a D,
}

/// How every call is answered, from the command line.
#[derive(Clone)]
struct Answer {
    me: String,
    respond: Option<Payload>,
    error: Option<serde_json::Value>,
    delay_ms: u64,
    hang: bool,
}

impl Answer {
    /// Prints the request's line, then answers it as told.
    async fn to<D: Serialize>(self, req: &Request<D>) -> Result<Payload, HandlerError> {
        let line = Event {
            event: if req.is_emit { "emit" } else { "call" },
            process: &req.process,
            pool: &req.pool,
            data: &req.data,
            origin: req.origin.as_deref(),
        };
        outln!(
            "{}",
            serde_json::to_string(&line).map_err(|e| HandlerError::msg(e.to_string()))?
        );
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        if let Some(e) = self.error {
            return Err(HandlerError(e));
        }
        match self.respond {
            Some(r) => Ok(r),
            None => Payload::from_json(&Echo {
                app_id: &self.me,
                process: &req.process,
                data: &req.data,
            })
            .map_err(|e| HandlerError::msg(format!("cannot write the answer: {e}"))),
        }
    }
}

use crate::cli::ReplyArgs;

pub async fn run(args: ReplyArgs) -> Result<()> {
    let respond = args
        .respond
        .as_deref()
        .map(|s| super::json_text_arg(s, "--respond"))
        .transpose()?;
    let error = args
        .error
        .as_deref()
        .map(|s| super::json_arg(Some(s), "--error"))
        .transpose()?;
    let opts = ClientOptions::new().takeover(args.takeover);
    // In an encrypted pool the handle must live as long as the handlers: it re-joins the pool
    // after a reconnect.
    let (client, vault) = match &args.keys {
        Some(keys) => {
            let [pool] = args.pools.as_slice() else {
                bail!("--keys is one pool's keys: give exactly one --pool with it");
            };
            let (c, v) = super::connect_sealed(&args.target, args.app.as_deref(), pool, keys, opts).await?;
            (c, Some(v))
        }
        None => (
            super::connect(&args.target, args.app.as_deref(), &args.pools, opts).await?,
            None,
        ),
    };
    let me = client.app_id().to_string();
    let answer = Answer {
        me: me.clone(),
        respond,
        error,
        delay_ms: args.delay_ms,
        hang: args.hang,
    };
    for t in &args.triggers {
        let answer = answer.clone();
        let serve = move |req: Request<Payload>| {
            let answer = answer.clone();
            async move { answer.to(&req).await }
        };
        match &vault {
            // Opened and sealed by the handle, as JSON text.
            Some(vault) => vault.handle_raw(t, serve).await?,
            None => client.handle_raw(t, serve).await?,
        }
    }
    let mut events = client.events();
    outln!(
        "{}",
        json!({"event": "ready", "app_id": me, "pools": args.pools, "triggers": args.triggers})
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            e = events.recv() => match e {
                Ok(ClientEvent::Disconnected { reason, reconnecting }) => {
                    outln!("{}", json!({"event": "disconnected", "reason": reason, "reconnecting": reconnecting}));
                    if !reconnecting {
                        anyhow::bail!("disconnected for good: {reason}");
                    }
                }
                Ok(ClientEvent::Reconnected) => outln!("{}", json!({"event": "reconnected"})),
                // It keeps retrying; the line says why it is not back yet.
                Ok(ClientEvent::ReconnectRefused { reason }) => {
                    outln!("{}", json!({"event": "reconnect_refused", "reason": reason}));
                }
                Ok(ClientEvent::PoolLeft { pool, reason }) => {
                    outln!("{}", json!({"event": "pool_left", "pool": pool, "reason": reason}));
                    if client.pools().is_empty() && vault.as_ref().is_none_or(|v| v.pool() == pool) {
                        anyhow::bail!("{reason} (it was the last pool this app served in)");
                    }
                }
                Ok(ClientEvent::TriggerRefused { trigger, reason }) => {
                    outln!("{}", json!({"event": "trigger_refused", "trigger": trigger, "reason": reason}));
                }
                Ok(ClientEvent::ServerError(e)) => outln!("{}", json!({"event": "server_error", "code": e.code, "message": e.message})),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => outln!("{}", json!({"event": "events_lagged", "missed": n})),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
