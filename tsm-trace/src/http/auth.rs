//! HTTP basic auth against bcrypt hashes (`basic_auth_users` of the web config).
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so it must not become the
//! way to starve the server: hashes are checked on the blocking pool, at most
//! [`MAX_CONCURRENT_VERIFIES`] at a time, and a user/password pair that was right once is
//! remembered (up to [`CACHE_ENTRIES`], then forgotten all at once), so a scraper pays it
//! once. An unknown user costs the same as a wrong password (no user enumeration by timing).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use base64::Engine;
use tokio::sync::Semaphore;

/// Why `basic_auth_users` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "basic_auth_users: the hash for user {user:?} is not a bcrypt hash; make one with `htpasswd -nBC 10 {user}`"
    )]
    Hash {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
    #[error("basic_auth_users: user name {user:?} contains ':', which basic auth cannot carry")]
    Colon { user: String },
    #[error("basic_auth_users: hashing the stand-in password")]
    Bcrypt(#[source] bcrypt::BcryptError),
}

pub const MAX_CONCURRENT_VERIFIES: usize = 2;
pub const CACHE_ENTRIES: usize = 64;
/// Longest `Authorization` header considered (bytes).
const MAX_HEADER: usize = 1024;

#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked for unknown users, so that they cost a bcrypt verification too.
    dummy: String,
    cache: Mutex<HashSet<(String, String)>>,
    verifies: Arc<Semaphore>,
}

impl BasicAuth {
    /// `users`: name → bcrypt hash; every hash must parse.
    pub fn new(users: BTreeMap<String, String>) -> Result<Self, AuthError> {
        let mut cost = bcrypt::DEFAULT_COST;
        for (user, hash) in &users {
            let parts = hash
                .parse::<bcrypt::HashParts>()
                .map_err(|source| AuthError::Hash {
                    user: user.clone(),
                    source,
                })?;
            cost = parts.get_cost();
            if user.contains(':') {
                return Err(AuthError::Colon { user: user.clone() });
            }
        }
        let dummy = bcrypt::hash("tsm-trace: no such user", cost).map_err(AuthError::Bcrypt)?;
        Ok(BasicAuth {
            users,
            dummy,
            cache: Mutex::new(HashSet::new()),
            verifies: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFIES)),
        })
    }

    /// `Ok(())` if the request carries a right user and password; otherwise the 401 to send.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Response<Body>> {
        let Some((user, pass)) = credentials(headers) else {
            return Err(unauthorized());
        };
        let key = (user, pass);
        if self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        let hash = self
            .users
            .get(&key.0)
            .cloned()
            .unwrap_or_else(|| self.dummy.clone());
        let known = self.users.contains_key(&key.0);
        let Ok(permit) = self.verifies.clone().acquire_owned().await else {
            return Err(unauthorized());
        };
        let pass = key.1.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(pass.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key);
            Ok(())
        } else {
            Err(unauthorized())
        }
    }
}

fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    if v.len() > MAX_HEADER {
        return None;
    }
    let v = std::str::from_utf8(v).ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn unauthorized() -> Response<Body> {
    let mut r = Response::new(Body::from("Unauthorized\n"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tsm-trace\", charset=\"UTF-8\""),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {b}")
    }

    #[test]
    fn credentials_are_parsed_strictly() {
        assert_eq!(
            credentials(&headers(&basic("prom", "a:b"))),
            Some(("prom".into(), "a:b".into()))
        );
        assert_eq!(credentials(&headers("Bearer abc")), None);
        assert_eq!(credentials(&headers("Basic !!!")), None);
        assert_eq!(credentials(&HeaderMap::new()), None);
        let nocolon = base64::engine::general_purpose::STANDARD.encode("prom");
        assert_eq!(credentials(&headers(&format!("Basic {nocolon}"))), None);
    }

    #[tokio::test]
    async fn right_password_passes_wrong_one_is_401() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)])).unwrap();
        assert!(auth.check(&headers(&basic("prom", "s3cret"))).await.is_ok());
        // Cached now: still right.
        assert!(auth.check(&headers(&basic("prom", "s3cret"))).await.is_ok());
        for bad in [
            basic("prom", "wrong"),
            basic("nobody", "s3cret"),
            "Basic".into(),
        ] {
            let r = auth.check(&headers(&bad)).await.unwrap_err();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert!(
                r.headers()[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic ")
            );
        }
    }

    #[test]
    fn bad_hashes_are_refused_naming_the_user() {
        let e = BasicAuth::new(BTreeMap::from([("prom".to_string(), "plain".to_string())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"prom\""), "{e}");
    }
}
