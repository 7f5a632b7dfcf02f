//! Pool management (the seeds' poolManager): pools created with `pool_create` are stored with
//! their type, description, owners and policies, loaded again at start, and changed or removed
//! only by their owners. Pools that exist only because apps joined them are live namespaces with
//! no stored configuration. Global and encrypted pools need clustering and the security layer;
//! until those exist, creating one is NOT_AVAILABLE rather than a pool that is silently local.

use serde_json::{Value, json};

use latzero_proto::message::{Policies, PoolRequest};
use latzero_proto::{AppId, ErrorCode, PoolName};

use crate::memory::Refusal;
use crate::server::State;
use crate::store::{PoolRecord, PoolUpdate, StoreError, now_ms};

fn policies(p: Option<Policies>) -> Value {
    serde_json::to_value(p.unwrap_or_default()).unwrap_or_else(|_| json!({}))
}

fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Exists(what) => Refusal::new(ErrorCode::PoolExists, format!("{what} already exists")),
        StoreError::NotFound(what) => Refusal::new(ErrorCode::PoolNotFound, format!("{what} not found")),
        other => Refusal::new(ErrorCode::Internal, format!("the pool could not be stored: {other}")),
    }
}

fn owner_only(rec: &PoolRecord, app: &AppId, what: &str) -> Result<(), Refusal> {
    if rec.owners.iter().any(|o| o == app.as_str()) {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "only the owners of pool '{}' ({:?}) may {what} it",
                rec.name, rec.owners
            ),
        ))
    }
}

/// The listings, answered from the directory (no store access; allowed before the handshake).
pub(crate) fn list(st: &State) -> Value {
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let pools: Vec<Value> = dir.pools.keys().filter_map(|p| dir.describe_pool(p)).collect();
    json!({ "action": "pool_list_result", "pools": pools })
}

pub(crate) fn show(st: &State, pool: &PoolName) -> Result<Value, Refusal> {
    let mut v = st
        .directory
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .describe_pool(pool)
        .ok_or_else(|| Refusal::new(ErrorCode::PoolNotFound, format!("no pool '{pool}'")))?;
    v["blocks"] = json!(st.memory.list(pool).iter().map(|e| e.describe()).collect::<Vec<_>>());
    Ok(json!({ "action": "pool_info", "pool": pool, "info": v }))
}

/// Create, update or remove: the store first, then the directory; the reply frame's JSON.
pub(crate) async fn change(st: &State, app: &AppId, req: PoolRequest) -> Result<Value, Refusal> {
    match req {
        PoolRequest::Create {
            pool,
            kind,
            description,
            owners,
            policies: p,
        } => {
            match kind.as_str() {
                "global" => {
                    return Err(Refusal::new(
                        ErrorCode::NotAvailable,
                        "global pools span machines and need cluster mode, which is not available yet",
                    ));
                }
                "encrypted" => {
                    return Err(Refusal::new(
                        ErrorCode::NotAvailable,
                        "encrypted pools need the security layer (triple-key encryption), which is not available yet",
                    ));
                }
                _ => {}
            }
            let now = now_ms();
            let rec = PoolRecord {
                name: pool.to_string(),
                kind,
                encrypted: false,
                owners: owners.unwrap_or_else(|| vec![app.to_string()]),
                policies: policies(p),
                description,
                created: now,
                updated: now,
                config: json!({}),
            };
            st.store.create_pool(rec.clone()).await.map_err(store_refusal)?;
            tracing::info!(pool = %pool, by = %app, "pool created");
            let mut dir = st.directory_mut();
            dir.adopt_pool(rec);
            Ok(json!({ "action": "pool_created", "pool": pool, "info": dir.describe_pool(&pool) }))
        }
        PoolRequest::Update {
            pool,
            description,
            owners,
            policies: p,
        } => {
            let rec = stored(st, &pool)?;
            owner_only(&rec, app, "change")?;
            let u = PoolUpdate {
                description,
                owners,
                policies: p.map(|r| policies(Some(r))),
                ..PoolUpdate::default()
            };
            let rec = st.store.update_pool(pool.as_str(), u).await.map_err(store_refusal)?;
            let mut dir = st.directory_mut();
            dir.adopt_pool(rec);
            Ok(json!({ "action": "pool_updated", "pool": pool, "info": dir.describe_pool(&pool) }))
        }
        PoolRequest::Remove { pool, force } => {
            let (rec, others) = {
                let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
                let p = dir
                    .pools
                    .get(&pool)
                    .ok_or_else(|| Refusal::new(ErrorCode::PoolNotFound, format!("no pool '{pool}'")))?;
                let others: Vec<String> = p.members.keys().filter(|m| *m != app).map(|m| m.to_string()).collect();
                (p.stored.clone(), others)
            };
            if let Some(r) = &rec {
                owner_only(r, app, "remove")?;
            }
            if !others.is_empty() && !force {
                return Err(Refusal::new(
                    ErrorCode::PoolInUse,
                    format!(
                        "pool '{pool}' still has members {others:?}; remove it with \"force\": true to make them leave"
                    ),
                ));
            }
            if rec.is_some() {
                st.store.remove_pool(pool.as_str()).await.map_err(store_refusal)?;
            }
            let left = st.directory_mut().remove_pool(&pool);
            let blocks = st.memory.remove_pool(&pool);
            for m in &left {
                if let Some(e) = crate::registry::store_membership(st, m).await {
                    tracing::warn!(app = %m, error = %e, "membership change not stored");
                }
            }
            tracing::info!(pool = %pool, by = %app, members = left.len(), blocks, "pool removed");
            Ok(json!({
                "action": "pool_removed", "pool": pool, "members_removed": left, "blocks_removed": blocks,
            }))
        }
        PoolRequest::List | PoolRequest::Show { .. } => unreachable!("listings are answered at once"),
    }
}

fn stored(st: &State, pool: &PoolName) -> Result<PoolRecord, Refusal> {
    st.directory
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .pools
        .get(pool)
        .and_then(|p| p.stored.clone())
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::PoolNotFound,
                format!("no stored pool '{pool}'; create it with pool_create first"),
            )
        })
}

/// The stored registrations, with whether each app is connected now.
pub(crate) async fn app_list(st: &State) -> Result<Value, Refusal> {
    let apps = st
        .store
        .all_apps()
        .await
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("cannot read the registry: {e}")))?;
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let apps: Vec<Value> = apps
        .into_iter()
        .map(|a| {
            let connected = dir.apps.contains_key(a.app_id.as_str());
            let mut v = serde_json::to_value(&a).unwrap_or(Value::Null);
            v["connected"] = json!(connected);
            v
        })
        .collect();
    Ok(json!({ "action": "app_list_result", "apps": apps }))
}
