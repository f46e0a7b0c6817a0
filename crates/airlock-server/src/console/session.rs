//! Console sessions: a random id in an `HttpOnly; SameSite=Strict; Path=/ui` cookie (`Secure`
//! under TLS), kept in this server's memory with the token it signed in with, its CSRF token and
//! its expiry. The token is what every page uses to call the JSON API, so each request is
//! authenticated again by the API: a revoked or expired token ends its sessions at once.
//!
//! In memory, per process: a restart signs everyone out, and behind several replicas a session
//! lives on the replica that issued it (use sticky sessions, or sign in again). Keeping the
//! token in the database instead would store a usable credential at rest, which the store never
//! does (it keeps only hashes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::tokens::random_bytes;

/// The session cookie.
pub const COOKIE: &str = "airlock_session";
/// The pre-session cookie that makes the sign-in form CSRF-safe (double submit).
pub const LOGIN_COOKIE: &str = "airlock_login";
/// A session ends this long after its last request.
pub const IDLE: Duration = Duration::from_secs(60 * 60);
/// A session ends this long after sign-in, however active.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// Most live sessions kept; past it, a new sign-in is refused (another user's session is never
/// dropped to make room).
pub const MAX_SESSIONS: usize = 10_000;
/// Most live sessions of one user, whatever its tokens (an agent mints plan-phase tokens, a
/// trust's jobs log in, all one user); a new sign-in past it ends that user's least recently
/// used session (so one user, an agent's say, can never sign anyone else out, nor fill the
/// process with [`MAX_SESSIONS`] of its own).
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// A sign-in refused because the process holds [`MAX_SESSIONS`] live sessions.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The token it signed in with (never written anywhere).
    pub token: String,
    /// Its CSRF token, in every state-changing form.
    pub csrf: String,
    /// Who signed in, as `whoami` said at sign-in (for presentation only: the API decides).
    pub who: Who,
    created: Instant,
    last_seen: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("who", &self.who.name)
            .finish_non_exhaustive()
    }
}

/// The signed-in token's identity.
#[derive(Debug, Clone)]
pub struct Who {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: airlock_core::Role,
    /// Its user.
    pub user: String,
}

/// The sessions of this process, keyed by the SHA-256 of their id.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    /// [`MAX_SESSIONS`] (smaller in unit tests).
    max: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::default(),
            max: MAX_SESSIONS,
        }
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// A fresh random secret (256 bits, hex).
pub fn secret() -> String {
    hex::encode(random_bytes::<32>())
}

/// Compares two secrets without an early exit.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (ha, hb): ([u8; 32], [u8; 32]) = (key(a), key(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl Sessions {
    /// Starts a session for `token`; returns its id (the cookie value). The least recently used
    /// session of the token's user ends if the user already has [`MAX_SESSIONS_PER_USER`];
    /// with [`MAX_SESSIONS`] live sessions of other users, the sign-in is refused.
    pub fn start(&self, token: String, who: Who) -> Result<String, Full> {
        let id = secret();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| live(s, now));
        let mine: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, s)| s.who.user == who.user)
            .map(|(k, s)| (*k, s.last_seen))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_USER {
            if let Some((oldest, _)) = mine.iter().min_by_key(|(_, seen)| *seen) {
                map.remove(oldest);
            }
        }
        if map.len() >= self.max {
            return Err(Full);
        }
        map.insert(
            key(&id),
            Session {
                token,
                csrf: secret(),
                who,
                created: now,
                last_seen: now,
            },
        );
        Ok(id)
    }

    /// The live session with this id, touched.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(id);
        match map.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.last_seen = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends the session with this id.
    pub fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(id));
    }

    /// Ends every session signed in with `token` (the API said it is no longer valid).
    pub fn end_token(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| s.token != token);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for `name`.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: &str) -> Who {
        Who {
            name: n.into(),
            role: airlock_core::Role::Reader,
            user: n.into(),
        }
    }

    #[test]
    fn sessions_start_end_and_die_with_their_token() {
        let s = Sessions::default();
        let a = s.start("tok-a".into(), who("a")).unwrap();
        let b = s.start("tok-b".into(), who("b")).unwrap();
        assert_eq!(s.get(&a).map(|x| x.token), Some("tok-a".into()));
        s.end_token("tok-a");
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
        s.end(&b);
        assert!(s.get(&b).is_none());
        assert!(s.get("guess").is_none());
    }

    #[test]
    fn sessions_expire_when_idle_and_after_the_absolute_limit() {
        let s = Sessions::default();
        let a = s.start("t".into(), who("a")).unwrap();
        let t0 = Instant::now();
        assert!(s.get_at(&a, t0 + IDLE / 2).is_some());
        assert!(s.get_at(&a, t0 + IDLE / 2 + IDLE).is_none(), "idle");
        let b = s.start("t".into(), who("b")).unwrap();
        let t1 = Instant::now();
        let steps = (ABSOLUTE.as_secs() / (IDLE.as_secs() / 2)) as u32;
        for k in 0..steps {
            assert!(s.get_at(&b, t1 + IDLE / 2 * k).is_some(), "step {k}");
        }
        assert!(s.get_at(&b, t1 + IDLE / 2 * steps).is_none(), "absolute");
    }

    #[test]
    fn a_user_past_its_cap_ends_only_its_own_oldest_session() {
        let s = Sessions::default();
        let other = s.start("tok-b".into(), who("b")).unwrap();
        let first = s.start("tok-a".into(), who("a")).unwrap();
        let mut mine = vec![first.clone()];
        // Another token of the same user counts with the first.
        for i in 1..MAX_SESSIONS_PER_USER {
            std::thread::sleep(Duration::from_millis(1));
            mine.push(s.start(format!("tok-a{}", i % 2), who("a")).unwrap());
        }
        assert!(mine.iter().all(|id| s.get(id).is_some()));
        // `first` is now the most recently used: the next sign-in ends the second one.
        std::thread::sleep(Duration::from_millis(1));
        assert!(s.get(&first).is_some());
        std::thread::sleep(Duration::from_millis(1));
        let newest = s.start("tok-a".into(), who("a")).unwrap();
        assert!(
            s.get(&mine[1]).is_none(),
            "the least recently used session of user a"
        );
        assert!(s.get(&first).is_some() && s.get(&newest).is_some());
        assert!(
            s.get(&other).is_some(),
            "another user's session is never ended"
        );
    }

    #[test]
    fn a_full_process_refuses_sign_ins_and_keeps_every_session() {
        let s = Sessions {
            max: 50,
            ..Sessions::default()
        };
        let first = s.start("tok-0".into(), who("0")).unwrap();
        for i in 1..50 {
            s.start(format!("tok-{i}"), who(&format!("u{i}"))).unwrap();
        }
        assert_eq!(s.start("tok-new".into(), who("n")), Err(Full));
        assert!(
            s.get(&first).is_some(),
            "no session was dropped to make room"
        );
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("", "abd"));
    }
}
