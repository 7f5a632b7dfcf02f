//! Pool management requests (docs/PROTOCOL.md §4.4) and the admin listings, parsed from their
//! own fields in a second pass like the block requests.

use serde::{Deserialize, Serialize};

use super::RawValue;
use super::request::{ParseError, bad_name, invalid};
use crate::name::{AppId, PoolName};

/// The pool actions, as sent in `action`.
pub const POOL_ACTIONS: [&str; 7] = [
    "pool_create",
    "pool_update",
    "pool_remove",
    "pool_list",
    "pool_show",
    "pool_challenge",
    "pool_prove",
];

/// The public verifiers of one key generation of an encrypted pool (base64 Ed25519 public
/// keys), as `pool_create` and `pool_update` carry them. Never the keys themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVerifiers {
    /// The key generation (1 for a new pool; one more than the last for a rotation).
    pub generation: u32,
    /// Verifies join proofs (derived from the SigilKey).
    pub join: String,
    /// Verifies writes (derived from the OblivionSeal).
    pub write: String,
}

/// What an app does in a pool, each governed by one list of [`Policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    /// Be a member (handshake, `join_pool`, rehydration).
    Join,
    /// Call triggers.
    Call,
    /// Emit to triggers.
    Emit,
    /// Read memory blocks (read, attach for reading, watch, stat, list, shared locks).
    Read,
    /// Write memory blocks (create, write, attach for writing, notify, delete, exclusive locks).
    Write,
}

impl PoolOp {
    /// The policy key, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolOp::Join => "join",
            PoolOp::Call => "call",
            PoolOp::Emit => "emit",
            PoolOp::Read => "read",
            PoolOp::Write => "write",
        }
    }
}

/// A stored pool's access policies: for each operation, the apps allowed (`"*"` for any app).
/// An absent list leaves that operation open to every member; the pool's owners may always do
/// everything. Unknown keys are refused, never ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Who may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// Who may call triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Vec<String>>,
    /// Who may emit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<Vec<String>>,
    /// Who may read memory blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<String>>,
    /// Who may write memory blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Vec<String>>,
}

impl Policies {
    /// The list governing `op`.
    pub fn list(&self, op: PoolOp) -> Option<&[String]> {
        match op {
            PoolOp::Join => self.join.as_deref(),
            PoolOp::Call => self.call.as_deref(),
            PoolOp::Emit => self.emit.as_deref(),
            PoolOp::Read => self.read.as_deref(),
            PoolOp::Write => self.write.as_deref(),
        }
    }

    /// Whether `app` may do `op` (owners are checked by the caller).
    pub fn allows(&self, op: PoolOp, app: &str) -> bool {
        self.list(op).is_none_or(|l| l.iter().any(|a| a == "*" || a == app))
    }

    fn check(&self) -> Result<(), String> {
        for op in [PoolOp::Join, PoolOp::Call, PoolOp::Emit, PoolOp::Read, PoolOp::Write] {
            for a in self.list(op).unwrap_or_default() {
                if a != "*" {
                    AppId::check(a).map_err(|e| format!("policies.{}: {e}", op.as_str()))?;
                }
            }
        }
        Ok(())
    }
}

/// A pool request.
#[derive(Debug, Clone)]
pub enum PoolRequest {
    /// Create (and store) a pool.
    Create {
        /// Its name.
        pool: PoolName,
        /// `local`, `global` or `encrypted`.
        kind: String,
        /// Free text.
        description: String,
        /// Apps that may update or remove it (default: the creator).
        owners: Option<Vec<String>>,
        /// Access policies.
        policies: Option<Policies>,
        /// For an encrypted pool: the verifiers of its first key generation.
        keys: Option<KeyVerifiers>,
    },
    /// Change a stored pool (owners only).
    Update {
        /// Its name.
        pool: PoolName,
        /// New description.
        description: Option<String>,
        /// New owners.
        owners: Option<Vec<String>>,
        /// New policies (replacing the old ones whole).
        policies: Option<Policies>,
        /// Encrypted pools: a new key generation (rotation).
        keys: Option<KeyVerifiers>,
    },
    /// Encrypted pools: ask for a join challenge.
    Challenge {
        /// The pool.
        pool: PoolName,
    },
    /// Encrypted pools: answer the challenge (the SigilKey's signature) and join.
    Prove {
        /// The pool.
        pool: PoolName,
        /// Base64 Ed25519 signature over the join message (docs/PROTOCOL.md §4.6).
        signature: String,
    },
    /// Remove a pool; refused while other apps are in it unless `force`.
    Remove {
        /// Its name.
        pool: PoolName,
        /// Remove it even with members (they leave it).
        force: bool,
    },
    /// Every pool, stored or live, by name — a page of them with `limit` (admin; allowed
    /// before the handshake).
    List(Page),
    /// One pool in detail (admin; allowed before the handshake).
    Show {
        /// Its name.
        pool: PoolName,
    },
}

#[derive(Deserialize)]
struct Fields {
    pool: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
    owners: Option<Vec<String>>,
    policies: Option<Box<RawValue>>,
    force: Option<bool>,
    keys: Option<super::Obj<KeyVerifiers>>,
    signature: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One page of a listing sorted by name: the names after `after`, at most `limit` of them (all
/// without it). The answer's `next` is the `after` of the next page, `null` after the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The last name of the page before; `None` for the first.
    pub after: Option<String>,
    /// At most this many (at least 1); `None`: all.
    pub limit: Option<usize>,
}

impl Page {
    /// Checks `limit` (0 would page forever): INVALID_MESSAGE.
    pub(crate) fn new<'a>(
        after: Option<String>,
        limit: Option<usize>,
        id: Option<&'a RawValue>,
    ) -> Result<Page, super::request::ParseError<'a>> {
        if limit == Some(0) {
            return Err(invalid(id, "field `limit` must be at least 1"));
        }
        Ok(Page { after, limit })
    }
}

/// Parses a pool action's fields. `action` is one of [`POOL_ACTIONS`].
pub(crate) fn parse_pool<'a>(
    action: &str,
    json: &'a [u8],
    id: Option<&'a RawValue>,
) -> Result<PoolRequest, ParseError<'a>> {
    let f: Fields = match serde_json::from_slice(json) {
        Ok(f) => f,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(json);
            match serde_path_to_error::deserialize::<_, Fields>(&mut de) {
                Ok(f) => f,
                Err(e) => return Err(invalid(id, format!("field `{}`: {}", e.path(), e.inner()))),
            }
        }
    };
    if action == "pool_list" {
        return Ok(PoolRequest::List(Page::new(f.after, f.limit, id)?));
    }
    let pool = f.pool.as_deref().ok_or_else(|| invalid(id, "missing field `pool`"))?;
    let pool = PoolName::try_from(pool).map_err(|e| bad_name(id, "pool", e))?;
    let owners = match f.owners {
        Some(list) => {
            // A pool without owners could never be changed or removed again.
            if list.is_empty() {
                return Err(invalid(id, "field `owners` must name at least one app"));
            }
            let mut owners: Vec<String> = Vec::with_capacity(list.len());
            for a in list {
                AppId::check(&a).map_err(|e| bad_name(id, "owners", e))?;
                if !owners.contains(&a) {
                    owners.push(a);
                }
            }
            Some(owners)
        }
        None => None,
    };
    let policies = match f.policies {
        Some(raw) => {
            let super::Obj(p) = serde_json::from_str::<super::Obj<Policies>>(raw.get()).map_err(|e| {
                invalid(
                    id,
                    format!("field `policies` must be an object of app lists keyed join, call, emit, read, write: {e}"),
                )
            })?;
            p.check().map_err(|e| invalid(id, e))?;
            Some(p)
        }
        None => None,
    };
    Ok(match action {
        "pool_create" => {
            let kind = f.kind.unwrap_or_else(|| "local".into());
            if !["local", "global", "encrypted"].contains(&kind.as_str()) {
                return Err(invalid(
                    id,
                    format!("field `type` must be one of local, global, encrypted, got \"{kind}\""),
                ));
            }
            PoolRequest::Create {
                pool,
                kind,
                description: f.description.unwrap_or_default(),
                owners,
                policies,
                keys: f.keys.map(|k| k.0),
            }
        }
        "pool_update" => PoolRequest::Update {
            pool,
            description: f.description,
            owners,
            policies,
            keys: f.keys.map(|k| k.0),
        },
        "pool_challenge" => PoolRequest::Challenge { pool },
        "pool_prove" => PoolRequest::Prove {
            pool,
            signature: f.signature.ok_or_else(|| invalid(id, "missing field `signature`"))?,
        },
        "pool_remove" => PoolRequest::Remove {
            pool,
            force: f.force.unwrap_or(false),
        },
        "pool_show" => PoolRequest::Show { pool },
        other => unreachable!("{other} is not in POOL_ACTIONS"),
    })
}

#[cfg(test)]
mod tests {
    use crate::ErrorCode;
    use crate::message::{PoolOp, PoolRequest, Request, parse_request};

    #[test]
    fn pool_requests_parse_and_bad_ones_say_why() {
        let p = parse_request(br#"{"action":"pool_create","id":1,"pool":"alpha","description":"d","owners":["a"]}"#)
            .unwrap();
        assert!(matches!(p.request, Request::Pool(PoolRequest::Create { ref kind, .. }) if kind == "local"));
        let e = parse_request(br#"{"action":"pool_create","id":1,"pool":"alpha","type":"weird"}"#).unwrap_err();
        assert!(e.message.contains("local, global, encrypted"), "{}", e.message);
        let e = parse_request(br#"{"action":"pool_update","id":1,"pool":"alpha","policies":[1]}"#).unwrap_err();
        assert!(e.message.contains("policies"), "{}", e.message);
        // An array would be read field by field (`[["x"]]` as join: ["x"]): refused.
        for policies in ["[]", r#"[["x"]]"#] {
            let req = format!(r#"{{"action":"pool_create","id":1,"pool":"a","policies":{policies}}}"#);
            let e = parse_request(req.as_bytes()).unwrap_err();
            assert!(e.message.contains("must be an object"), "{policies}: {}", e.message);
        }
        let e = parse_request(br#"{"action":"pool_update","id":1,"pool":"a","keys":[2,"j","w"]}"#).unwrap_err();
        assert!(
            e.message.contains("keys") && e.message.contains("expected an object"),
            "{}",
            e.message
        );
        // No owners would leave the pool unchangeable; repeated ones are one.
        let e = parse_request(br#"{"action":"pool_update","id":1,"pool":"a","owners":[]}"#).unwrap_err();
        assert!(e.message.contains("at least one app"), "{}", e.message);
        let p = parse_request(br#"{"action":"pool_create","id":1,"pool":"a","owners":["b","a","b"]}"#).unwrap();
        let Request::Pool(PoolRequest::Create { owners, .. }) = p.request else {
            panic!("{:?}", p.request)
        };
        assert_eq!(owners, Some(vec!["b".to_owned(), "a".to_owned()]));
        let e = parse_request(br#"{"action":"pool_update","id":1,"pool":"a","policies":{"wirte":["x"]}}"#).unwrap_err();
        assert!(
            e.message.contains("wirte"),
            "an unknown key is refused, not ignored: {}",
            e.message
        );
        let e =
            parse_request(br#"{"action":"pool_update","id":1,"pool":"a","policies":{"call":["a b"]}}"#).unwrap_err();
        assert!(e.message.contains("policies.call"), "{}", e.message);
        let p =
            parse_request(br#"{"action":"pool_update","id":1,"pool":"a","policies":{"call":["x","*"],"write":[]}}"#)
                .unwrap();
        let Request::Pool(PoolRequest::Update { policies: Some(p), .. }) = p.request else {
            panic!()
        };
        assert!(p.allows(PoolOp::Call, "anyone") && p.allows(PoolOp::Join, "anyone"));
        assert!(!p.allows(PoolOp::Write, "x") && p.allows(PoolOp::Read, "x"));
        let e = parse_request(br#"{"action":"pool_remove","id":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = parse_request(br#"{"action":"pool_create","id":1,"pool":"a","owners":["x y"]}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidName);
        assert!(matches!(
            parse_request(br#"{"action":"pool_list","id":1}"#).unwrap().request,
            Request::Pool(PoolRequest::List(p)) if p == super::Page::default()
        ));
        assert!(matches!(
            parse_request(br#"{"action":"pool_list","id":1,"after":"a","limit":2}"#).unwrap().request,
            Request::Pool(PoolRequest::List(p)) if p == super::Page { after: Some("a".into()), limit: Some(2) }
        ));
    }
}
