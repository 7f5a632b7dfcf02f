//! The durable app registry (the seeds' appRegistry): what the directory holds for connected
//! apps, written through to the store, and rehydration — an app that comes back with no pools
//! and no triggers (or asks with `rehydrate: true`) gets its stored ones back.
//!
//! Registrations are acknowledged after they are stored, so an app that got its ack is in the
//! database even if the server is killed right after. When the store fails (a full disk, a
//! read-only data dir) the connection keeps working in memory and its ack says `store_error`.

use std::sync::Arc;
use std::time::Duration;

use latzero_proto::message::RawValue;
use latzero_proto::{AppId, PoolName, TriggerName};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::server::State;
use crate::store::{AppRecord, AppUpdate, now_ms};

/// How a handshake asked to be remembered, and what it asked for.
#[derive(Debug)]
pub(crate) struct HandshakeInfo {
    /// Restore the stored pools, triggers and meta: the handshake sent none, or asked.
    pub restore: bool,
    pub ephemeral: bool,
    pub protocol_version: Option<String>,
    pub pools: Vec<PoolName>,
    pub triggers: Vec<TriggerName>,
    pub meta: Option<Box<RawValue>>,
    /// The pools the app's credential allows (`None`: any); restored pools are limited to them.
    pub allowed_pools: Option<Vec<String>>,
}

/// What rehydration restored.
#[derive(Debug)]
pub(crate) struct Restored {
    pub pools: Vec<String>,
    pub triggers: Vec<String>,
    pub meta: Option<Box<RawValue>>,
    pub last_seen: i64,
}

/// The outcome of a handshake's store step: what the app is in and serves from now on.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub pools: Vec<PoolName>,
    pub triggers: Vec<TriggerName>,
    pub meta: Option<Box<RawValue>>,
    pub restored: Option<Restored>,
    pub store_error: Option<String>,
}

/// The store's side of a handshake, before the app becomes routable: restore what is stored if
/// asked (`restore`), then store the result. The session
/// applies the outcome to the directory and acknowledges in one step, so nothing is routed to
/// the connection before its ack.
pub(crate) async fn handshake(st: &State, app: &AppId, info: HandshakeInfo) -> Outcome {
    let mut out = Outcome {
        pools: info.pools,
        triggers: info.triggers,
        meta: info.meta,
        restored: None,
        store_error: None,
    };
    if info.ephemeral {
        return out;
    }
    let stored = match st.store.get_app(app.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            out.store_error = Some(e.to_string());
            return out;
        }
    };
    if let Some(rec) = &stored
        && info.restore
    {
        let allowed = |p: &str| info.allowed_pools.as_ref().is_none_or(|a| a.iter().any(|x| x == p));
        let pools: Vec<PoolName> = rec
            .pools
            .iter()
            .filter(|p| allowed(p.as_str()))
            .filter_map(|p| PoolName::try_from(p.as_str()).ok())
            .collect();
        let triggers: Vec<TriggerName> = rec
            .triggers
            .iter()
            .filter_map(|t| TriggerName::try_from(t.as_str()).ok())
            .collect();
        let meta = (out.meta.is_none() && !rec.meta.is_null())
            .then(|| serde_json::value::to_raw_value(&rec.meta).ok())
            .flatten();
        for p in &pools {
            if !out.pools.contains(p) {
                out.pools.push(p.clone());
            }
        }
        for t in &triggers {
            if !out.triggers.contains(t) {
                out.triggers.push(t.clone());
            }
        }
        if meta.is_some() {
            out.meta = meta.clone();
        }
        out.restored = Some(Restored {
            pools: pools.iter().map(|p| p.to_string()).collect(),
            triggers: triggers.iter().map(|t| t.to_string()).collect(),
            meta,
            last_seen: rec.last_seen,
        });
    }
    let now = now_ms();
    let mut pools: Vec<String> = out.pools.iter().map(|p| p.to_string()).collect();
    let mut triggers: Vec<String> = out.triggers.iter().map(|t| t.to_string()).collect();
    pools.sort();
    triggers.sort();
    let rec = AppRecord {
        app_id: app.to_string(),
        pools,
        triggers,
        meta: out
            .meta
            .as_ref()
            .and_then(|m| serde_json::from_str(m.get()).ok())
            .unwrap_or(Value::Null),
        protocol_version: info
            .protocol_version
            .unwrap_or_else(|| latzero_proto::PROTOCOL_VERSION.into()),
        registered: stored.as_ref().map_or(now, |s| s.registered),
        last_seen: now,
        rehydrated: out.restored.is_some(),
    };
    out.store_error = st.store.register_app(rec).await.err().map(|e| e.to_string());
    out
}

/// Stores an app's pools and triggers after a membership change; the store's error, if any.
pub(crate) async fn store_membership(st: &State, app: &AppId) -> Option<String> {
    let rec = current(st, app)?;
    let update = AppUpdate {
        pools: Some(rec.pools.clone()),
        triggers: Some(rec.triggers.clone()),
        last_seen: Some(now_ms()),
        ..AppUpdate::default()
    };
    match st.store.update_app(app.as_str(), update).await {
        Ok(_) => None,
        // Stored before the change could be (a store error at handshake): store it whole now.
        Err(crate::store::StoreError::NotFound(_)) => {
            let rec = AppRecord {
                registered: now_ms(),
                ..rec
            };
            st.store.register_app(rec).await.err().map(|e| e.to_string())
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Records when a disconnected app was last seen (not awaited: a disconnect never waits).
pub(crate) fn on_disconnect(st: &State, app: &AppId) {
    let store = st.store.clone();
    let app = app.to_string();
    tokio::spawn(async move {
        let u = AppUpdate {
            last_seen: Some(now_ms()),
            ..AppUpdate::default()
        };
        if let Err(e) = store.update_app(&app, u).await
            && !matches!(
                e,
                crate::store::StoreError::NotFound(_) | crate::store::StoreError::Closed
            )
        {
            tracing::warn!(app, error = %e, "cannot record last_seen");
        }
    });
}

/// The directory's view of a connected app, as a record to store.
fn current(st: &State, app: &AppId) -> Option<AppRecord> {
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let a = dir.apps.get(app)?;
    Some(AppRecord {
        app_id: app.to_string(),
        pools: a.pools.iter().map(|p| p.to_string()).collect(),
        triggers: a.triggers.iter().map(|t| t.to_string()).collect(),
        meta: a
            .meta
            .as_ref()
            .and_then(|m| serde_json::from_str(m.get()).ok())
            .unwrap_or(Value::Null),
        protocol_version: latzero_proto::PROTOCOL_VERSION.into(),
        registered: 0,
        last_seen: now_ms(),
        rehydrated: false,
    })
}

/// How often stale registrations are looked for, at most (more often if the retention is
/// shorter).
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// Forgets the registrations of apps that are not connected and have not been seen for
/// `store.app_retention` of the server's running time (time it was stopped does not count):
/// at start, then every hour (or every retention, if shorter), and once more at `stop`, which
/// records how long this run lasted. A zero retention keeps them for ever.
pub(crate) async fn forget_stale(st: Arc<State>, stop: CancellationToken) {
    let keep = st.config.store.app_retention;
    if keep.is_zero() {
        return;
    }
    let retention = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let started = now_ms();
    loop {
        let connected = {
            let st = st.clone();
            move |id: &str| {
                st.directory
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .apps
                    .contains_key(id)
            }
        };
        match st
            .store
            .forget_absent_apps(started, now_ms(), retention, connected)
            .await
        {
            Ok(gone) if !gone.is_empty() => tracing::info!(
                count = gone.len(),
                retention_ms = keep.as_millis() as u64,
                first = %gone[0],
                "forgot app registrations not seen within the retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot forget stale app registrations"),
        }
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(keep.min(FORGET_EVERY)) => {}
        }
    }
}
