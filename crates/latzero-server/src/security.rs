//! Authentication (the seeds' security module, first part). With `required`, a handshake — and
//! an admin request made before one — must carry a credential:
//!
//! - a static token: the server keeps only SHA-256 hashes and compares in constant time;
//!   a token grants any app id, any pool, and the admin requests;
//! - a JWT signed with HS256 (a shared secret) or EdDSA (an Ed25519 key; the server holds only
//!   the public key), with `exp` required, whose `app_id` (or `sub`) must name the app, whose
//!   optional `pools` lists the pools it may join, and whose `admin: true` allows the admin
//!   requests.
//!
//! A failed check is AUTH_FAILED and the connection is closed; so is a connection whose JWT
//! expires while it is open. Pool policies are checked per
//! operation by the directory (`Pool::check`); TLS and encrypted pools are the other parts of the
//! security layer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use latzero_proto::message::Credential;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Authentication settings.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Refuse handshakes (and anonymous admin requests) without a valid credential.
    pub required: bool,
    /// SHA-256 of each accepted static token, as 64 hex digits.
    pub token_sha256: Vec<String>,
    /// The HS256 secret for JWTs.
    pub jwt_hs256_secret: Option<Vec<u8>>,
    /// The Ed25519 public key (PEM) for EdDSA JWTs.
    pub jwt_ed25519_public_pem: Option<Vec<u8>>,
}

/// What a credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Pools it may join; `None`: any.
    pub pools: Option<Vec<String>>,
    /// Admin requests (status, shutdown, backup, listings).
    pub admin: bool,
    /// When the credential stops being accepted (a JWT's `exp`, with the leeway the check
    /// allows); `None` for one that does not expire. A connection it admitted ends then.
    pub expires: Option<SystemTime>,
}

impl Grant {
    pub fn may_join(&self, pool: &str) -> bool {
        self.pools.as_ref().is_none_or(|p| p.iter().any(|x| x == pool))
    }

    /// Everything, when authentication is off.
    pub fn all() -> Grant {
        Grant {
            pools: None,
            admin: true,
            expires: None,
        }
    }
}

/// The checker built from [`AuthConfig`] at start.
pub(crate) struct Auth {
    pub required: bool,
    hashes: Vec<[u8; 32]>,
    hs256: Option<DecodingKey>,
    eddsa: Option<DecodingKey>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("required", &self.required)
            .field("tokens", &self.hashes.len())
            .field("hs256", &self.hs256.is_some())
            .field("eddsa", &self.eddsa.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    app_id: Option<String>,
    sub: Option<String>,
    pools: Option<Vec<String>>,
    #[serde(default)]
    admin: bool,
    /// Required by the validation (seconds since the Unix epoch).
    exp: u64,
}

/// SHA-256 of a token as 64 hex digits (what the config holds).
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Auth {
    pub fn new(c: &AuthConfig) -> Result<Auth, String> {
        let mut hashes = vec![];
        for h in &c.token_sha256 {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .filter_map(|i| h.get(i..i + 2).and_then(|x| u8::from_str_radix(x, 16).ok()))
                .collect();
            let arr: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("token hash '{h}' is not 64 hex digits (a SHA-256)"))?;
            hashes.push(arr);
        }
        let hs256 = c.jwt_hs256_secret.as_deref().map(DecodingKey::from_secret);
        let eddsa = c
            .jwt_ed25519_public_pem
            .as_deref()
            .map(DecodingKey::from_ed_pem)
            .transpose()
            .map_err(|e| format!("the Ed25519 public key is not a PEM public key: {e}"))?;
        if c.required && hashes.is_empty() && hs256.is_none() && eddsa.is_none() {
            return Err("authentication is required but no token hash or JWT key is configured".into());
        }
        Ok(Auth {
            required: c.required,
            hashes,
            hs256,
            eddsa,
        })
    }

    /// Checks a credential for `app` (a handshake) or for admin requests (`app` is `None`).
    pub fn check(&self, cred: Option<&Credential>, app: Option<&str>) -> Result<Grant, String> {
        if !self.required {
            return Ok(Grant::all());
        }
        let grant = match cred {
            None => {
                return Err(
                    "this server requires a credential: send \"auth\": {\"token\": ...} or {\"jwt\": ...}".into(),
                );
            }
            Some(Credential::Token(t)) => {
                let h: [u8; 32] = Sha256::digest(t.as_bytes()).into();
                // Compare against every hash, in constant time each, whatever matches first.
                let ok = self
                    .hashes
                    .iter()
                    .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&h));
                if !bool::from(ok) {
                    return Err("the token is not accepted".into());
                }
                Grant::all()
            }
            Some(Credential::Jwt(j)) => self.jwt(j, app)?,
        };
        if app.is_none() && !grant.admin {
            return Err("admin requests need a token, or a JWT with \"admin\": true".into());
        }
        Ok(grant)
    }

    fn jwt(&self, token: &str, app: Option<&str>) -> Result<Grant, String> {
        let mut last = String::from("no JWT key is configured");
        for (key, alg) in [(&self.hs256, Algorithm::HS256), (&self.eddsa, Algorithm::EdDSA)] {
            let Some(key) = key else { continue };
            let validation = Validation::new(alg);
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    let named = c.app_id.as_deref().or(c.sub.as_deref());
                    if let Some(app) = app
                        && named != Some(app)
                    {
                        return Err(format!("the JWT names app {named:?}, not '{app}'"));
                    }
                    let expires = c.exp.saturating_add(validation.leeway);
                    return Ok(Grant {
                        pools: c.pools,
                        admin: c.admin,
                        expires: UNIX_EPOCH.checked_add(Duration::from_secs(expires)),
                    });
                }
                Err(e) => last = format!("the JWT is not accepted: {e}"),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn exp() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    #[test]
    fn tokens_are_kept_hashed_and_checked() {
        let a = Auth::new(&AuthConfig {
            required: true,
            token_sha256: vec![token_sha256("s3cret")],
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(
            a.check(Some(&Credential::Token("s3cret".into())), Some("x")),
            Ok(Grant::all())
        );
        assert!(a.check(Some(&Credential::Token("s3cre".into())), Some("x")).is_err());
        assert!(a.check(None, Some("x")).is_err());
        assert!(a.check(Some(&Credential::Jwt("a.b.c".into())), Some("x")).is_err());
        assert!(
            Auth::new(&AuthConfig {
                required: true,
                token_sha256: vec!["abc".into()],
                ..AuthConfig::default()
            })
            .is_err()
        );
        assert!(
            Auth::new(&AuthConfig {
                required: true,
                ..AuthConfig::default()
            })
            .is_err()
        );
        let off = Auth::new(&AuthConfig::default()).unwrap();
        assert_eq!(off.check(None, None), Ok(Grant::all()));
    }

    #[test]
    fn jwts_name_the_app_and_its_pools() {
        let a = Auth::new(&AuthConfig {
            required: true,
            jwt_hs256_secret: Some(b"k".to_vec()),
            ..AuthConfig::default()
        })
        .unwrap();
        let sign = |claims: serde_json::Value, key: &[u8]| {
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key)).unwrap()
        };
        let good = sign(json!({"app_id": "w", "pools": ["p"], "exp": exp()}), b"k");
        let g = a.check(Some(&Credential::Jwt(good.clone())), Some("w")).unwrap();
        assert!(g.may_join("p") && !g.may_join("q") && !g.admin);
        assert!(a.check(Some(&Credential::Jwt(good.clone())), Some("other")).is_err());
        assert!(a.check(Some(&Credential::Jwt(good)), None).is_err(), "not an admin JWT");
        let admin = sign(json!({"sub": "ops", "admin": true, "exp": exp()}), b"k");
        assert!(a.check(Some(&Credential::Jwt(admin)), None).unwrap().admin);
        let forged = sign(json!({"app_id": "w", "exp": exp()}), b"wrong key");
        assert!(a.check(Some(&Credential::Jwt(forged)), Some("w")).is_err());
        let expired = sign(json!({"app_id": "w", "exp": 1000}), b"k");
        assert!(a.check(Some(&Credential::Jwt(expired)), Some("w")).is_err());
        let no_exp = sign(json!({"app_id": "w"}), b"k");
        assert!(a.check(Some(&Credential::Jwt(no_exp)), Some("w")).is_err());
    }
}
