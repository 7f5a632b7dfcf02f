//! Pool management (the seeds' poolManager): pools created with `pool_create` are stored with
//! their type, description, owners and policies, loaded again at start, and changed or removed
//! only by their owners. Pools that exist only because apps joined them are live namespaces with
//! no stored configuration. Global pools need clustering; until it exists, creating one is
//! NOT_AVAILABLE rather than a pool that is silently local.
//!
//! Encrypted pools (docs/PROTOCOL.md §4.6) are created with the public verifiers of their first
//! key generation, rotated by adding one (owners only), and joined only by answering a
//! challenge with the SigilKey: `pool_challenge`, then `pool_prove`.

use std::sync::Arc;

use serde_json::{Value, json};

use latzero_crypto::Verifiers;
use latzero_proto::message::{KeyVerifiers, Page, Policies, PoolOp, PoolRequest};
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

/// A page's items, and its `next`: the last item's name when more follow (`null` otherwise).
fn paged<T>(mut items: Vec<T>, limit: Option<usize>, name: impl Fn(&T) -> &str) -> (Vec<T>, Value) {
    match limit {
        Some(l) if items.len() > l => {
            items.truncate(l);
            let next = items.last().map(|i| name(i).to_owned());
            (items, json!(next))
        }
        _ => (items, Value::Null),
    }
}

/// The listings, answered from the directory (no store access; allowed before the handshake).
pub(crate) fn list(st: &State, page: &Page) -> Value {
    use std::ops::Bound;
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let from = page.after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    // One more than the page, to know whether another follows.
    let names: Vec<&PoolName> = dir
        .pools
        .range::<str, _>((from, Bound::Unbounded))
        .map(|(n, _)| n)
        .take(page.limit.map_or(usize::MAX, |l| l.saturating_add(1)))
        .collect();
    let (names, next) = paged(names, page.limit, |n| n.as_str());
    let pools: Vec<Value> = names.into_iter().filter_map(|p| dir.describe_pool(p)).collect();
    json!({ "action": "pool_list_result", "pools": pools, "next": next })
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
/// `admin`: the request carries admin rights (always, without authentication), which a live
/// pool's removal needs while other apps are in it — it has no owners to ask.
pub(crate) async fn change(st: &State, app: &AppId, req: PoolRequest, admin: bool) -> Result<Value, Refusal> {
    match req {
        PoolRequest::Create {
            pool,
            kind,
            description,
            owners,
            policies: p,
            keys,
        } => {
            if kind == "global" {
                return Err(Refusal::new(
                    ErrorCode::NotAvailable,
                    "global pools span machines and need cluster mode, which is not available yet",
                ));
            }
            let encrypted = kind == "encrypted";
            let config = match (encrypted, keys) {
                (true, Some(k)) => {
                    check_verifiers(&k, 1)?;
                    json!({ "keys": [k] })
                }
                (true, None) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "an encrypted pool is created with `keys` (the verifiers of key generation 1); `latzero keys generate POOL` makes them",
                    ));
                }
                (false, Some(_)) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "`keys` is only for encrypted pools",
                    ));
                }
                (false, None) => json!({}),
            };
            st.directory
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .check_new_pool(&pool)?;
            let now = now_ms();
            let rec = PoolRecord {
                name: pool.to_string(),
                kind,
                encrypted,
                owners: owners.unwrap_or_else(|| vec![app.to_string()]),
                policies: policies(p),
                description,
                created: now,
                updated: now,
                config,
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
            keys,
        } => {
            let rec = stored(st, &pool)?;
            owner_only(&rec, app, "change")?;
            let config = match keys {
                Some(k) if rec.encrypted => {
                    let latest = crate::directory::key_generations(&rec)
                        .last()
                        .map_or(0, |v| v.generation);
                    check_verifiers(&k, latest + 1)?;
                    let mut config = rec.config.clone();
                    match config["keys"].as_array_mut() {
                        Some(list) => list.push(json!(k)),
                        None => config["keys"] = json!([k]),
                    }
                    tracing::info!(pool = %pool, by = %app, generation = k.generation, "pool keys rotated");
                    Some(config)
                }
                Some(_) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "`keys` is only for encrypted pools",
                    ));
                }
                None => None,
            };
            let u = PoolUpdate {
                description,
                owners,
                policies: p.map(|r| policies(Some(r))),
                config,
                ..PoolUpdate::default()
            };
            let rec = st.store.update_pool(pool.as_str(), u).await.map_err(store_refusal)?;
            // The new owners and policies apply to the members already in the pool too.
            let (revoked, info) = {
                let mut dir = st.directory_mut();
                dir.adopt_pool(rec);
                let revoked = dir.enforce(&pool, app);
                (revoked, dir.describe_pool(&pool))
            };
            // Rights first: a lease the expelled leave behind goes to no waiter that lost them.
            st.memory.on_revoke(&pool, &revoked.no_read, &revoked.no_write);
            let out = &revoked.expelled_conns;
            st.memory.on_leave(
                &pool,
                |c| out.contains(&c),
                &format!("'{app}' changed the policies of pool '{pool}', which no longer let the app join it"),
            );
            for m in &revoked.expelled {
                if let Some(e) = crate::registry::store_membership(st, m).await {
                    tracing::warn!(app = %m, error = %e, "membership change not stored");
                }
            }
            if !revoked.expelled.is_empty() {
                tracing::info!(pool = %pool, by = %app, members = ?revoked.expelled, "members taken out by a policy change");
            }
            Ok(json!({
                "action": "pool_updated", "pool": pool, "info": info, "members_removed": revoked.expelled,
            }))
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
            match &rec {
                Some(r) => owner_only(r, app, "remove")?,
                // A live pool has no owners: any member may remove it when it is alone in it,
                // but taking others out takes admin rights.
                None if !others.is_empty() && force && !admin => {
                    return Err(Refusal::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "pool '{pool}' is a live pool (no owners); removing it while {others:?} are in it takes an admin credential"
                        ),
                    ));
                }
                None => {}
            }
            if !others.is_empty() && !force {
                return Err(Refusal::new(
                    ErrorCode::PoolInUse,
                    format!(
                        "pool '{pool}' still has members {others:?}; remove it with \"force\": true to make them leave"
                    ),
                ));
            }
            // Its stored configuration, if any, and every stored membership of it.
            st.store.remove_pool(pool.as_str()).await.map_err(store_refusal)?;
            let left = st.directory_mut().remove_pool(&pool, app);
            let blocks = st.memory.remove_pool(&pool);
            // Its persistent blocks stay: the leases, waits and watches its members held on
            // them end, as every member has left.
            st.memory
                .on_leave(&pool, |_| true, &format!("pool '{pool}' was removed by '{app}'"));
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
        PoolRequest::List(_) | PoolRequest::Show { .. } | PoolRequest::Challenge { .. } | PoolRequest::Prove { .. } => {
            unreachable!("answered by the session at once")
        }
    }
}

/// Checks that `k` names `generation` and two valid Ed25519 public keys.
fn check_verifiers(k: &KeyVerifiers, generation: u32) -> Result<(), Refusal> {
    if k.generation != generation {
        return Err(Refusal::new(
            ErrorCode::InvalidMessage,
            format!("`keys.generation` must be {generation}, got {}", k.generation),
        ));
    }
    for (field, v) in [("join", &k.join), ("write", &k.write)] {
        if Verifiers::parse_key(v).is_none() {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                format!("`keys.{field}` is not a base64 Ed25519 public key"),
            ));
        }
    }
    Ok(())
}

/// A join challenge for an encrypted pool: its newest key generation and a fresh nonce (for the
/// session to keep), and the `pool_challenge` reply, which also carries the write verifiers of
/// every generation (for readers that were not given them).
pub(crate) fn challenge(st: &State, pool: &PoolName) -> Result<(u32, [u8; 32], Value), Refusal> {
    use base64::Engine;
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let keys = dir
        .pools
        .get(pool)
        .and_then(|p| p.keys())
        .ok_or_else(|| Refusal::new(ErrorCode::PoolNotFound, format!("no encrypted pool '{pool}'")))?;
    let latest = keys.last().ok_or_else(|| {
        Refusal::new(
            ErrorCode::Internal,
            format!("encrypted pool '{pool}' has no readable keys"),
        )
    })?;
    let mut nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let writes: serde_json::Map<String, Value> = keys
        .iter()
        .map(|v| (v.generation.to_string(), json!(Verifiers::b64(&v.write))))
        .collect();
    let reply = json!({
        "action": "pool_challenge", "pool": pool, "generation": latest.generation,
        "nonce": base64::engine::general_purpose::STANDARD.encode(nonce), "write_verifiers": writes,
    });
    Ok((latest.generation, nonce, reply))
}

/// Checks a join proof: the SigilKey's signature over the join message for this app and nonce.
pub(crate) fn verify_join(
    st: &State,
    pool: &PoolName,
    app: &AppId,
    generation: u32,
    nonce: &[u8; 32],
    signature: &str,
) -> Result<(), Refusal> {
    use base64::Engine;
    let denied = || {
        Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "the join proof for encrypted pool '{pool}' does not verify: wrong SigilKey (key generation {generation})"
            ),
        )
    };
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let p = dir
        .pools
        .get(pool)
        .ok_or_else(|| Refusal::new(ErrorCode::PoolNotFound, format!("no encrypted pool '{pool}'")))?;
    p.check(PoolOp::Join, app.as_str(), pool.as_str())?;
    let v = p
        .keys()
        .and_then(|k| k.iter().find(|v| v.generation == generation))
        .ok_or_else(denied)?;
    let sig: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::InvalidMessage,
                "`signature` is not a base64 Ed25519 signature",
            )
        })?;
    if latzero_crypto::verify_join(&v.join, pool.as_str(), app.as_str(), generation, nonce, &sig) {
        Ok(())
    } else {
        Err(denied())
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

/// After apps left `pools`: forgets each one left unused that holds no memory block (see
/// [`crate::directory::Directory::forget_if_unused`]).
pub(crate) fn forget_unused(st: &State, pools: &[PoolName]) {
    let unused: Vec<&PoolName> = {
        let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
        pools.iter().filter(|p| dir.is_unused(p)).collect()
    };
    for p in unused {
        if st.memory.list(p).is_empty() {
            st.directory_mut().forget_if_unused(p);
        }
    }
}

/// Forgets an app's stored registration: it leaves `app_list`, and its pools and triggers are
/// not rehydrated when it comes back (it registers afresh). Refused while it is connected, as
/// the session would store it again: the store asks, in its own order, so an app connecting
/// meanwhile is either refused for or stored again after the removal.
pub(crate) async fn app_remove(st: &Arc<State>, app: &AppId) -> Result<Value, Refusal> {
    let connected = {
        let (st, app) = (st.clone(), app.clone());
        move || {
            st.directory
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .apps
                .contains_key(&app)
        }
    };
    match st.store.remove_app_unless(app.as_str(), connected).await {
        Ok(Some(true)) => {
            tracing::info!(app = %app, "stored registration removed");
            Ok(json!({ "action": "app_removed", "app_id": app.as_str() }))
        }
        Ok(Some(false)) => Err(Refusal::new(
            ErrorCode::AppNotFound,
            format!("no stored registration for app '{app}'"),
        )),
        Ok(None) => Err(Refusal::new(
            ErrorCode::AppConnected,
            format!("app '{app}' is connected; its registration can be removed once it disconnects"),
        )),
        Err(e) => Err(store_refusal(e)),
    }
}

/// The stored registrations (a page of them), with whether each app is connected now.
pub(crate) async fn app_list(st: &State, page: Page) -> Result<Value, Refusal> {
    let limit = page.limit;
    let apps = st
        .store
        .apps_page(page.after, limit.map(|l| l.saturating_add(1)))
        .await
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("cannot read the registry: {e}")))?;
    let (apps, next) = paged(apps, limit, |a| a.app_id.as_str());
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
    Ok(json!({ "action": "app_list_result", "apps": apps, "next": next }))
}
