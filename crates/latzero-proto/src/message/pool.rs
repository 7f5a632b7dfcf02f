//! Pool management requests (docs/PROTOCOL.md §4.4) and the admin listings, parsed from their
//! own fields in a second pass like the block requests.

use serde::Deserialize;

use super::RawValue;
use super::request::{ParseError, bad_name, invalid};
use crate::name::{AppId, PoolName};

/// The pool actions, as sent in `action`.
pub const POOL_ACTIONS: [&str; 5] = ["pool_create", "pool_update", "pool_remove", "pool_list", "pool_show"];

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
        /// Access policies, stored as given (a JSON object).
        policies: Option<Box<RawValue>>,
    },
    /// Change a stored pool (owners only).
    Update {
        /// Its name.
        pool: PoolName,
        /// New description.
        description: Option<String>,
        /// New owners.
        owners: Option<Vec<String>>,
        /// New policies.
        policies: Option<Box<RawValue>>,
    },
    /// Remove a pool; refused while other apps are in it unless `force`.
    Remove {
        /// Its name.
        pool: PoolName,
        /// Remove it even with members (they leave it).
        force: bool,
    },
    /// Every pool, stored or live (admin; allowed before the handshake).
    List,
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
        return Ok(PoolRequest::List);
    }
    let pool = f.pool.as_deref().ok_or_else(|| invalid(id, "missing field `pool`"))?;
    let pool = PoolName::try_from(pool).map_err(|e| bad_name(id, "pool", e))?;
    let owners = match f.owners {
        Some(list) => {
            for a in &list {
                AppId::check(a).map_err(|e| bad_name(id, "owners", e))?;
            }
            Some(list)
        }
        None => None,
    };
    if let Some(p) = &f.policies
        && !p.get().trim_start().starts_with('{')
    {
        return Err(invalid(id, "field `policies` must be a JSON object"));
    }
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
                policies: f.policies,
            }
        }
        "pool_update" => PoolRequest::Update {
            pool,
            description: f.description,
            owners,
            policies: f.policies,
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
    use crate::message::{PoolRequest, Request, parse_request};

    #[test]
    fn pool_requests_parse_and_bad_ones_say_why() {
        let p = parse_request(br#"{"action":"pool_create","id":1,"pool":"alpha","description":"d","owners":["a"]}"#)
            .unwrap();
        assert!(matches!(p.request, Request::Pool(PoolRequest::Create { ref kind, .. }) if kind == "local"));
        let e = parse_request(br#"{"action":"pool_create","id":1,"pool":"alpha","type":"weird"}"#).unwrap_err();
        assert!(e.message.contains("local, global, encrypted"), "{}", e.message);
        let e = parse_request(br#"{"action":"pool_update","id":1,"pool":"alpha","policies":[1]}"#).unwrap_err();
        assert!(e.message.contains("policies"), "{}", e.message);
        let e = parse_request(br#"{"action":"pool_remove","id":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = parse_request(br#"{"action":"pool_create","id":1,"pool":"a","owners":["x y"]}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidName);
        assert!(matches!(
            parse_request(br#"{"action":"pool_list","id":1}"#).unwrap().request,
            Request::Pool(PoolRequest::List)
        ));
    }
}
