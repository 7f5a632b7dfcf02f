//! `latzero call`: one call (prints the result), or `--count` calls (prints a JSON summary: the
//! outcome of the calls, their rate, and the latency percentiles of those answered).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use latzero_client::{BroadcastReply, Client, ClientError, ClientOptions, EncryptedPool, Payload};
use serde_json::{Value, json};

use crate::cli::CallArgs;

/// A call's latency as recorded: nanoseconds, three significant digits, up to an hour (longer is
/// counted as an hour; a call's ttl is at most that by default).
fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

/// The percentiles of `h` in microseconds (`null` when no call was answered).
fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "p50": us(h.value_at_quantile(0.5)),
        "p90": us(h.value_at_quantile(0.9)),
        "p99": us(h.value_at_quantile(0.99)),
        "p99.9": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

pub async fn run(args: CallArgs) -> Result<()> {
    let data = super::payload_arg(args.data.as_deref(), args.file.as_deref())?;
    let mut opts = ClientOptions::new().reconnect(false);
    if let Some(ms) = args.timeout_ms {
        opts = opts.request_timeout(Duration::from_millis(ms));
    }
    let (client, vault) = match &args.keys {
        Some(keys) => {
            let (c, v) = super::connect_sealed(&args.target, args.app.as_deref(), &args.pool, keys, opts).await?;
            (c, Some(Arc::new(v)))
        }
        None => {
            let pools = std::slice::from_ref(&args.pool);
            (
                super::connect(&args.target, args.app.as_deref(), pools, opts).await?,
                None,
            )
        }
    };
    let Some(count) = args.count else {
        return match &vault {
            Some(vault) => single_sealed(vault, &args, &data).await,
            None => single(&client, &args, &data).await,
        };
    };
    let client = Arc::new(client);
    let args = Arc::new(args);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.unwrap_or(1) {
        let (client, args, next, data) = (client.clone(), args.clone(), next.clone(), data.clone());
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut mismatched = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut responders: BTreeMap<String, u64> = BTreeMap::new();
            let mut latency = histogram();
            loop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seq >= count {
                    break;
                }
                let echo = args
                    .expect_echo
                    .then(|| json!({"seq": seq, "from": client.app_id().as_str()}));
                let sent = Instant::now();
                let answer = match &vault {
                    // Sealed and opened in the pool's handle: the time counted includes both.
                    Some(vault) => match &echo {
                        Some(e) => sealed_call(vault, &args, e).await,
                        None => sealed_call(vault, &args, &data).await,
                    },
                    None => {
                        let mut req = match &echo {
                            Some(e) => client.request(&args.pool, &args.trigger).data(e),
                            None => client.request(&args.pool, &args.trigger).data(&data),
                        };
                        if let Some(to) = &args.to {
                            req = req.destination(to);
                        }
                        req.send().await
                    }
                };
                match answer {
                    Ok(v) => {
                        ok += 1;
                        latency.saturating_record(sent.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
                        if let Some(app) = v.get("app_id").and_then(Value::as_str) {
                            *responders.entry(app.to_owned()).or_default() += 1;
                        }
                        if echo.is_some() && v.get("data") != echo.as_ref() {
                            mismatched += 1;
                        }
                    }
                    Err(e) => *errors.entry(error_name(&e)).or_default() += 1,
                }
            }
            (ok, mismatched, errors, responders, latency)
        }));
    }
    let mut ok = 0;
    let mut mismatched = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut responders: BTreeMap<String, u64> = BTreeMap::new();
    let mut latency = histogram();
    for t in tasks {
        let (o, m, e, r, l) = t.await?;
        latency.add(&l)?;
        ok += o;
        mismatched += m;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
        for (k, v) in r {
            *responders.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "{}",
        json!({"calls": count, "ok": ok, "mismatched": mismatched, "errors": errors,
               "responders": responders, "seconds": secs, "calls_per_sec": count as f64 / secs,
               "latency_us": percentiles(&latency)})
    );
    if ok != count || mismatched != 0 {
        bail!("{} of {count} calls failed or mismatched", count - ok + mismatched);
    }
    Ok(())
}

fn error_name(e: &ClientError) -> String {
    match e.code() {
        Some(c) => c.to_string(),
        None => match e {
            ClientError::Handler(_) => "HANDLER_ERROR".into(),
            ClientError::Disconnected { .. } => "DISCONNECTED".into(),
            other => other.to_string(),
        },
    }
}

/// A call into an encrypted pool (`--keys`), on `--to`'s app if it names one.
async fn sealed_call<T: serde::Serialize + ?Sized>(
    vault: &EncryptedPool,
    args: &CallArgs,
    data: &T,
) -> Result<Value, ClientError> {
    match &args.to {
        Some(to) => vault.call_to(to, &args.trigger, data).await,
        None => vault.call(&args.trigger, data).await,
    }
}

/// One call into an encrypted pool: its result's JSON text as opened (with `--broadcast`, each
/// handler's).
async fn single_sealed(vault: &EncryptedPool, args: &CallArgs, data: &Payload) -> Result<()> {
    if args.broadcast {
        return print_broadcast(vault.broadcast_raw(&args.trigger, data).await?);
    }
    let result = match &args.to {
        Some(to) => vault.call_raw_to(to, &args.trigger, data).await,
        None => vault.call_raw(&args.trigger, data).await,
    };
    match result {
        Ok(v) => {
            outln!("{v}");
            Ok(())
        }
        Err(ClientError::Handler(v)) => bail!("HANDLER_ERROR: {v}"),
        Err(e) => Err(e.into()),
    }
}

/// A broadcast's results, a line per handler, each answer's JSON text as its handler wrote it;
/// an error when any handler did not answer with a result (as with `--count`, a script sees it
/// from the exit status).
fn print_broadcast(replies: Vec<BroadcastReply<Payload>>) -> Result<()> {
    /// A line's fields, in the order a `json!` object prints them (by name).
    #[derive(serde::Serialize)]
    struct Line<'a> {
        app_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Written as the JSON text it holds.
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<&'a Payload>,
        status: &'static str,
    }
    let (all, mut failed) = (replies.len(), 0);
    for r in &replies {
        let line = match &r.result {
            Ok(p) => Line {
                app_id: &r.app_id,
                error: None,
                response: Some(p),
                status: "ok",
            },
            Err(e) => {
                failed += 1;
                Line {
                    app_id: &r.app_id,
                    error: Some(e.to_string()),
                    response: None,
                    status: "error",
                }
            }
        };
        outln!("{}", serde_json::to_string(&line)?);
    }
    if failed > 0 {
        bail!("{failed} of {all} handlers did not answer with a result (their lines above say why)");
    }
    Ok(())
}

async fn single(client: &Client, args: &CallArgs, data: &Payload) -> Result<()> {
    let mut req = client.request(&args.pool, &args.trigger).data(data);
    if let Some(to) = &args.to {
        req = req.destination(to);
    }
    let result = if args.broadcast {
        req.broadcast_raw().await.map(print_broadcast)
    } else {
        // The result's JSON text as the handler wrote it (a value read and printed again would
        // change an integer past 64 bits, or a decimal past a double's precision).
        req.send_raw().await.map(|v| {
            outln!("{v}");
            Ok(())
        })
    };
    match result {
        Ok(printed) => printed,
        Err(ClientError::Handler(v)) => bail!("HANDLER_ERROR: {v}"),
        Err(e) => Err(e.into()),
    }
}
