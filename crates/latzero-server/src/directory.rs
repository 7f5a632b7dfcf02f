//! The directory: which apps are connected (the registry) and which pools exist, who is in them
//! and who handles which trigger (the pools). One `RwLock` guards it; the call path takes only the
//! read side, for a lookup, and never across an `.await`.
//!
//! Triggers belong to an app, not to a pool: an app's triggers can be called in every pool it
//! is a member of. The per-pool handler index is kept in step on join, leave, register,
//! unregister and disconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use latzero_crypto::Verifiers;
use latzero_proto::ErrorCode;
use latzero_proto::frame::encode_message;
use latzero_proto::message::{KeyVerifiers, Policies, PoolOp, Presence, RawValue};
use latzero_proto::{AppId, PoolName, TriggerName};
use serde_json::{Value, json};

use crate::memory::Refusal;
use crate::session::conn::{Conn, ConnId};
use crate::store::PoolRecord;

/// A connected app.
#[derive(Debug)]
pub(crate) struct App {
    pub conn: Arc<Conn>,
    pub pools: BTreeSet<PoolName>,
    pub triggers: BTreeSet<TriggerName>,
    pub meta: Option<Box<RawValue>>,
    pub connected_at: SystemTime,
}

/// The handlers of one trigger in one pool, with the round-robin cursor.
#[derive(Debug, Default)]
pub(crate) struct Handlers {
    pub list: Vec<Arc<Conn>>,
    cursor: AtomicUsize,
}

impl Handlers {
    /// The handler for the next call: of the next two in round-robin order, the one with fewer
    /// calls in flight (the first when they are level, so that handlers keeping up take turns).
    /// A handler that stops answering keeps its calls until they time out, so it is passed
    /// over while any other has fewer, rather than taking every n-th call into the same wait.
    pub fn pick(&self) -> Option<&Arc<Conn>> {
        let n = self.list.len();
        if n < 2 {
            return self.list.first();
        }
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let (a, b) = (&self.list[i], &self.list[(i + 1) % n]);
        let load = |c: &Conn| c.handling.load(Ordering::Relaxed);
        Some(if load(b) < load(a) { b } else { a })
    }
}

/// A pool.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The stored configuration of a pool created with `pool_create` (or loaded at start);
    /// `None` for a pool that exists only because apps joined it.
    pub stored: Option<PoolRecord>,
    /// The stored pool's owners and policies, parsed once for the per-operation checks.
    pub access: Option<Access>,
    pub created_at: SystemTime,
    pub members: BTreeMap<AppId, Arc<Conn>>,
    /// Looked up on every call and emit. foldhash rather than std's SipHash (~140 more
    /// instructions a call): still seeded at random per process, as names come from clients.
    pub handlers: HashMap<TriggerName, Handlers, foldhash::fast::RandomState>,
    pub presence: HashMap<ConnId, Arc<Conn>>,
}

/// What a policy change took away ([`Directory::enforce`]).
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    /// Members taken out of the pool: `join` no longer allows them.
    pub expelled: Vec<AppId>,
    pub expelled_conns: Vec<ConnId>,
    /// Remaining members' connections that may no longer read, or write, the pool's blocks.
    pub no_read: Vec<ConnId>,
    pub no_write: Vec<ConnId>,
}

/// Who may do what in a stored pool: its owners everything, others what its policies allow.
#[derive(Debug)]
pub(crate) struct Access {
    pub owners: Vec<String>,
    pub policies: Policies,
    /// Encrypted pools: the verifiers of each key generation, oldest first (never empty for an
    /// encrypted pool; empty otherwise).
    pub keys: Arc<[Verifiers]>,
}

impl Access {
    fn of(rec: &PoolRecord) -> Access {
        let policies = serde_json::from_value::<Policies>(rec.policies.clone()).unwrap_or_else(|e| {
            // Fail closed: a policy that cannot be read allows nothing beyond the owners.
            tracing::warn!(pool = %rec.name, error = %e, "unreadable pool policies; only the owners may use the pool until they set valid ones");
            let none = Some(Vec::new());
            Policies {
                join: none.clone(),
                call: none.clone(),
                emit: none.clone(),
                read: none.clone(),
                write: none,
            }
        });
        Access {
            owners: rec.owners.clone(),
            policies,
            keys: key_generations(rec).into(),
        }
    }
}

/// The verifiers stored with an encrypted pool (`config.keys`); unreadable entries are skipped
/// with a warning (a pool left without any then refuses every join and write).
pub(crate) fn key_generations(rec: &PoolRecord) -> Vec<Verifiers> {
    if !rec.encrypted {
        return Vec::new();
    }
    let list: Vec<KeyVerifiers> = serde_json::from_value(rec.config["keys"].clone()).unwrap_or_default();
    let mut out: Vec<Verifiers> = list
        .iter()
        .filter_map(|k| {
            let v = Verifiers::parse_key(&k.join)
                .zip(Verifiers::parse_key(&k.write))
                .map(|(join, write)| Verifiers {
                    generation: k.generation,
                    join,
                    write,
                });
            if v.is_none() {
                tracing::warn!(pool = %rec.name, generation = k.generation, "unreadable key verifiers ignored");
            }
            v
        })
        .collect();
    out.sort_by_key(|v| v.generation);
    out
}

impl Pool {
    /// The key generations of an encrypted pool (empty for a plain one).
    pub fn keys(&self) -> Option<&Arc<[Verifiers]>> {
        if !self.is_encrypted() {
            return None;
        }
        self.access.as_ref().map(|a| &a.keys)
    }

    /// Whether the pool was created encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.stored.as_ref().is_some_and(|r| r.encrypted)
    }

    /// Whether `app` may do `op` here: always in a pool with no stored configuration.
    pub fn allows(&self, op: PoolOp, app: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|a| a.owners.iter().any(|o| o == app) || a.policies.allows(op, app))
    }

    /// [`Pool::allows`] as a PERMISSION_DENIED refusal naming the policy.
    pub fn check(&self, op: PoolOp, app: &str, pool: &str) -> Result<(), Refusal> {
        if self.allows(op, app) {
            return Ok(());
        }
        let list = self
            .access
            .as_ref()
            .and_then(|a| a.policies.list(op))
            .unwrap_or_default();
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "pool '{pool}' policy does not allow app '{app}' to {} (policies.{}: {list:?}; owners may do everything)",
                op.as_str(),
                op.as_str()
            ),
        ))
    }

    fn new() -> Self {
        Pool {
            stored: None,
            access: None,
            created_at: SystemTime::now(),
            members: BTreeMap::new(),
            handlers: HashMap::default(),
            presence: HashMap::new(),
        }
    }

    fn add_handler(&mut self, trigger: &TriggerName, conn: &Arc<Conn>) {
        let h = self.handlers.entry(trigger.clone()).or_default();
        if !h.list.iter().any(|c| c.id == conn.id) {
            h.list.push(conn.clone());
        }
    }

    fn remove_handler(&mut self, trigger: &TriggerName, conn: ConnId) {
        if let Some(h) = self.handlers.get_mut(trigger) {
            h.list.retain(|c| c.id != conn);
            if h.list.is_empty() {
                self.handlers.remove(trigger);
            }
        }
    }

    /// Tells presence subscribers (other than the app itself) that an app joined or left.
    fn announce(&self, app: &AppId, event: &'static str, pool: &PoolName) {
        if self.presence.is_empty() {
            return;
        }
        let frame: Bytes = encode_message(&Presence {
            action: "presence",
            pool: pool.as_str(),
            app_id: app.as_str(),
            event,
        });
        for c in self.presence.values() {
            if c.app() != Some(app) {
                let _ = c.send(&frame);
            }
        }
    }
}

/// Apps and pools.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub apps: HashMap<AppId, App>,
    pub pools: BTreeMap<PoolName, Pool>,
    /// `max_pools`, `max_pools_per_app`, `max_triggers_per_app`: what [`Directory::check_join`],
    /// [`Directory::check_register`] and [`Directory::check_new_pool`] hold to.
    limits: crate::config::Limits,
}

/// The `items` not in `mine` yet (each once), and how many `mine` would hold with them.
fn adding<'a, T: Ord>(mine: Option<&BTreeSet<T>>, items: &'a [T]) -> (BTreeSet<&'a T>, usize) {
    let new: BTreeSet<&T> = items.iter().filter(|i| !mine.is_some_and(|m| m.contains(*i))).collect();
    let after = mine.map_or(0, BTreeSet::len) + new.len();
    (new, after)
}

/// OVERLOADED for a limit `what` would pass.
fn over(what: String, setting: &str) -> Refusal {
    Refusal::new(
        ErrorCode::Overloaded,
        format!(
            "{what} (the server's {setting} limit; raise it with --{})",
            setting.replace('_', "-")
        ),
    )
}

impl Directory {
    /// An empty directory holding to `limits`.
    pub fn with_limits(limits: &crate::config::Limits) -> Directory {
        Directory {
            limits: limits.clone(),
            ..Directory::default()
        }
    }

    /// Whether `app` (connected or about to be) may join `pools` on top of the pools it is in:
    /// OVERLOADED naming the limit it would pass — `max_pools_per_app`, or `max_pools` for the
    /// pools that do not exist yet.
    pub fn check_join(&self, app: &AppId, pools: &[PoolName]) -> Result<(), Refusal> {
        let (joining, after) = adding(self.apps.get(app).map(|a| &a.pools), pools);
        if after > self.limits.max_pools_per_app {
            return Err(over(
                format!(
                    "app '{app}' would be in {after} pools; an app may be in {}",
                    self.limits.max_pools_per_app
                ),
                "max_pools_per_app",
            ));
        }
        let new = joining.iter().filter(|p| !self.pools.contains_key(**p)).count();
        if new > 0 && self.pools.len() + new > self.limits.max_pools {
            return Err(over(
                format!(
                    "the server holds {} pools and may hold {}; joining would create {new}",
                    self.pools.len(),
                    self.limits.max_pools
                ),
                "max_pools",
            ));
        }
        Ok(())
    }

    /// Whether `app` may register `triggers` on top of its own: OVERLOADED past
    /// `max_triggers_per_app`.
    pub fn check_register(&self, app: &AppId, triggers: &[TriggerName]) -> Result<(), Refusal> {
        let (_, after) = adding(self.apps.get(app).map(|a| &a.triggers), triggers);
        if after > self.limits.max_triggers_per_app {
            return Err(over(
                format!(
                    "app '{app}' would have {after} triggers; an app may register {}",
                    self.limits.max_triggers_per_app
                ),
                "max_triggers_per_app",
            ));
        }
        Ok(())
    }

    /// [`Directory::join`] if [`Directory::check_join`] allows it; nothing otherwise.
    pub fn try_join(&mut self, app: &AppId, pools: &[PoolName]) -> Result<(), Refusal> {
        self.check_join(app, pools)?;
        self.join(app, pools);
        Ok(())
    }

    /// [`Directory::register`] if [`Directory::check_register`] allows it; nothing otherwise.
    pub fn try_register(&mut self, app: &AppId, triggers: &[TriggerName]) -> Result<(), Refusal> {
        self.check_register(app, triggers)?;
        self.register(app, triggers);
        Ok(())
    }

    /// Whether a pool named `name` may be created (`pool_create`): OVERLOADED past `max_pools`
    /// when it does not exist yet.
    pub fn check_new_pool(&self, name: &PoolName) -> Result<(), Refusal> {
        if self.pools.contains_key(name) || self.pools.len() < self.limits.max_pools {
            return Ok(());
        }
        Err(over(
            format!("the server holds {} pools, as many as it may", self.pools.len()),
            "max_pools",
        ))
    }

    /// The live connection of an app, if any.
    pub fn conn_of(&self, app: &str) -> Option<&Arc<Conn>> {
        self.apps.get(app).map(|a| &a.conn)
    }

    /// Binds an app to a connection. The caller has checked for duplicates.
    pub fn add_app(&mut self, conn: &Arc<Conn>, app: AppId, meta: Option<Box<RawValue>>) {
        self.apps.insert(
            app,
            App {
                conn: conn.clone(),
                pools: BTreeSet::new(),
                triggers: BTreeSet::new(),
                meta,
                connected_at: SystemTime::now(),
            },
        );
    }

    /// Joins pools, creating them on first join.
    pub fn join(&mut self, app_id: &AppId, pools: &[PoolName]) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        for p in pools {
            if !app.pools.insert(p.clone()) {
                continue;
            }
            let pool = self.pools.entry(p.clone()).or_insert_with(Pool::new);
            pool.members.insert(app_id.clone(), app.conn.clone());
            for t in &app.triggers {
                pool.add_handler(t, &app.conn);
            }
            pool.announce(app_id, "joined", p);
            tracing::debug!(app = %app_id, pool = %p, "joined pool");
        }
    }

    /// Leaves pools. A pool left empty stays until [`Directory::forget_if_unused`] is asked
    /// (it needs to know the pool holds no memory block).
    pub fn leave(&mut self, app_id: &AppId, pools: &[PoolName]) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        for p in pools {
            if !app.pools.remove(p) {
                continue;
            }
            if let Some(pool) = self.pools.get_mut(p) {
                pool.members.remove(app_id);
                pool.presence.remove(&app.conn.id);
                for t in &app.triggers {
                    pool.remove_handler(t, app.conn.id);
                }
                pool.announce(app_id, "left", p);
            }
        }
    }

    /// Registers triggers in every pool the app is in.
    pub fn register(&mut self, app_id: &AppId, triggers: &[TriggerName]) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        for t in triggers {
            if !app.triggers.insert(t.clone()) {
                continue;
            }
            for p in &app.pools {
                if let Some(pool) = self.pools.get_mut(p) {
                    pool.add_handler(t, &app.conn);
                }
            }
        }
    }

    /// Unregisters triggers.
    pub fn unregister(&mut self, app_id: &AppId, triggers: &[TriggerName]) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        for t in triggers {
            if !app.triggers.remove(t) {
                continue;
            }
            for p in &app.pools {
                if let Some(pool) = self.pools.get_mut(p) {
                    pool.remove_handler(t, app.conn.id);
                }
            }
        }
    }

    /// Removes an app if `conn` is still its connection (a takeover may have replaced it);
    /// returns the pools it left.
    pub fn remove_app(&mut self, app_id: &AppId, conn: ConnId) -> Vec<PoolName> {
        match self.apps.get(app_id) {
            Some(a) if a.conn.id == conn => {}
            _ => return vec![],
        }
        let pools: Vec<PoolName> = self.apps[app_id].pools.iter().cloned().collect();
        self.leave(app_id, &pools);
        self.apps.remove(app_id);
        pools
    }

    /// Whether `name` is a live pool (no stored configuration) that no app is in or watches for
    /// presence: a candidate for [`Directory::forget_if_unused`].
    pub fn is_unused(&self, name: &PoolName) -> bool {
        self.pools
            .get(name)
            .is_some_and(|p| p.stored.is_none() && p.members.is_empty() && p.presence.is_empty())
    }

    /// Forgets `name` if it is still unused ([`Directory::is_unused`]). Joining creates a live
    /// pool and nothing else would ever remove it, so an app joining and leaving pools of new
    /// names would otherwise grow the directory without end. The caller has checked that the
    /// pool holds no memory block (only a member can create one).
    pub fn forget_if_unused(&mut self, name: &PoolName) {
        if self.is_unused(name) {
            self.pools.remove(name);
        }
    }

    /// The pools and triggers of an app, for acks.
    pub fn app_state(&self, app_id: &AppId) -> (Vec<&str>, Vec<&str>) {
        match self.apps.get(app_id) {
            Some(a) => (
                a.pools.iter().map(PoolName::as_str).collect(),
                a.triggers.iter().map(TriggerName::as_str).collect(),
            ),
            None => (vec![], vec![]),
        }
    }

    /// Attaches a stored pool's configuration (creating the pool if no app is in it yet).
    pub fn adopt_pool(&mut self, rec: PoolRecord) {
        let name = match PoolName::try_from(rec.name.as_str()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(pool = %rec.name, error = %e, "ignoring a stored pool with an invalid name");
                return;
            }
        };
        let pool = self.pools.entry(name).or_insert_with(Pool::new);
        pool.created_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(rec.created.max(0) as u64);
        pool.access = Some(Access::of(&rec));
        pool.stored = Some(rec);
    }

    /// Removes a pool at `by`'s request: each member is told it is no longer in it
    /// (`pool_left`), leaves it (presence subscribers are told), and is returned.
    pub fn remove_pool(&mut self, name: &PoolName, by: &AppId) -> Vec<AppId> {
        let Some(pool) = self.pools.get(name) else {
            return vec![];
        };
        let members: Vec<AppId> = pool.members.keys().cloned().collect();
        let message = format!("pool '{name}' was removed by '{by}'; this app is no longer in it");
        self.expel(name, &members, by, &message);
        self.pools.remove(name);
        members
    }

    /// Takes `members` out of pool `name` at `by`'s request: each is told (`pool_left` with
    /// `message`) and leaves it (presence subscribers are told).
    fn expel(&mut self, name: &PoolName, members: &[AppId], by: &AppId, message: &str) {
        let Some(pool) = self.pools.get(name) else { return };
        if members.is_empty() {
            return;
        }
        let frame = encode_message(&serde_json::json!({
            "action": "pool_left",
            "pool": name.as_str(),
            "by": by.as_str(),
            "message": message,
        }));
        for m in members {
            if let Some(conn) = pool.members.get(m) {
                // A member too slow to take it is closed as a slow consumer, which leaves the
                // pool too.
                let _ = conn.send(&frame);
            }
        }
        for m in members {
            self.leave(m, std::slice::from_ref(name));
        }
    }

    /// After `by` changed a stored pool's owners or policies: the members its new policies do
    /// not let join are taken out of it ([`Revoked::expelled`], told by `pool_left`), and the
    /// connections of the others that may no longer read or write its blocks are listed, for
    /// [`crate::memory::Memory::on_revoke`] to end what they held.
    pub fn enforce(&mut self, name: &PoolName, by: &AppId) -> Revoked {
        let Some(pool) = self.pools.get(name) else {
            return Revoked::default();
        };
        let mut r = Revoked::default();
        for (m, conn) in &pool.members {
            if !pool.allows(PoolOp::Join, m.as_str()) {
                r.expelled.push(m.clone());
                r.expelled_conns.push(conn.id);
                continue;
            }
            if !pool.allows(PoolOp::Read, m.as_str()) {
                r.no_read.push(conn.id);
            }
            if !pool.allows(PoolOp::Write, m.as_str()) {
                r.no_write.push(conn.id);
            }
        }
        let message = format!("'{by}' changed the policies of pool '{name}', which no longer let this app join it");
        self.expel(name, &r.expelled, by, &message);
        r
    }

    /// One pool, for `pool_show` and `pool_list`.
    pub fn describe_pool(&self, name: &PoolName) -> Option<Value> {
        let p = self.pools.get(name)?;
        let mut triggers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (t, h) in &p.handlers {
            triggers.insert(t.as_str(), h.list.iter().map(|c| c.app_str()).collect());
        }
        let mut v = json!({
            "name": name.as_str(),
            "type": "local",
            "stored": p.stored.is_some(),
            "created_at": unix_ms(p.created_at),
            "members": p.members.keys().map(AppId::as_str).collect::<Vec<_>>(),
            "triggers": triggers,
        });
        if let Some(r) = &p.stored {
            v["type"] = json!(r.kind);
            v["description"] = json!(r.description);
            v["owners"] = json!(r.owners);
            v["policies"] = r.policies.clone();
            v["updated_at"] = json!(r.updated);
            if r.encrypted {
                // Public verifiers only; the server never has the keys.
                v["key_generations"] = json!(key_generations(r).iter().map(|k| k.generation).collect::<Vec<_>>());
            }
        }
        Some(v)
    }

    /// Pools, members and triggers for `status`: the first `limit` pools and connected apps by
    /// name (all without it), and how many there are of each.
    pub fn snapshot(&self, limit: Option<usize>) -> Value {
        let limit = limit.unwrap_or(usize::MAX);
        let pools: Vec<Value> = self
            .pools
            .iter()
            .take(limit)
            .map(|(name, p)| {
                let mut triggers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for (t, h) in &p.handlers {
                    triggers.insert(t.as_str(), h.list.iter().map(|c| c.app_str()).collect());
                }
                json!({
                    "name": name.as_str(),
                    "type": p.stored.as_ref().map_or("local", |r| r.kind.as_str()),
                    "stored": p.stored.is_some(),
                    "created_at": unix_ms(p.created_at),
                    "members": p.members.keys().map(AppId::as_str).collect::<Vec<_>>(),
                    "triggers": triggers,
                })
            })
            .collect();
        let mut ids: Vec<&AppId> = self.apps.keys().collect();
        if limit < ids.len() {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        let apps: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let a = &self.apps[id];
                json!({
                    "app_id": id.as_str(),
                    "peer": a.conn.peer,
                    "pools": a.pools.iter().map(PoolName::as_str).collect::<Vec<_>>(),
                    "triggers": a.triggers.iter().map(TriggerName::as_str).collect::<Vec<_>>(),
                    "meta": a.meta.as_ref().and_then(|m| serde_json::from_str::<Value>(m.get()).ok()),
                    "connected_at": unix_ms(a.connected_at),
                    "calls_in_flight": a.conn.inflight.load(Ordering::Relaxed),
                    "calls_handling": a.conn.handling.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({
            "pools": pools,
            "pools_total": self.pools.len(),
            "apps": apps,
            "apps_total": self.apps.len(),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
