//! HTTP basic auth against bcrypt hashes (`basic_auth_users`). bcrypt is
//! slow by design (tens of milliseconds at cost 10), so a password that
//! verified once is remembered per user, and at most two verifications run
//! at once: wrong guesses cannot take more than two cores' worth of time.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use base64::Engine as _;
use tokio::sync::Semaphore;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// user -> the password last verified for them.
    verified: Mutex<BTreeMap<String, String>>,
    slots: Arc<Semaphore>,
    /// A hash of the users' highest cost, checked for unknown users, so an
    /// unknown name costs what a wrong password does: timing tells no one
    /// which names exist.
    dummy: String,
    /// bcrypt verifications run (for tests).
    verifications: AtomicU64,
}

impl std::fmt::Debug for BasicAuth {
    /// Names the users, never their hashes or passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Constant-time equality of two byte strings of possibly different length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl BasicAuth {
    /// None when no users are configured (auth off).
    pub fn new(users: BTreeMap<String, String>) -> Option<Self> {
        if users.is_empty() {
            return None;
        }
        // `$2b$10$...`: the cost is the second field (the web config's
        // hashes were checked at start).
        let cost = users
            .values()
            .filter_map(|h| h.split('$').nth(2)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST)
            .clamp(4, 31);
        let dummy = bcrypt::hash("kato: no such user", cost).expect("a cost in bcrypt's range");
        Some(BasicAuth {
            users,
            verified: Mutex::new(BTreeMap::new()),
            slots: Arc::new(Semaphore::new(2)),
            dummy,
            verifications: AtomicU64::new(0),
        })
    }

    /// Does the `Authorization` header value name a user with its password?
    pub async fn allows(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let (hash, known_user) = match self.users.get(user) {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        };
        if let Some(known) = self.verified.lock().expect("lock").get(user) {
            if same(known.as_bytes(), password.as_bytes()) {
                return true;
            }
        }
        let Ok(_slot) = Arc::clone(&self.slots).acquire_owned().await else {
            return false;
        };
        let (p, h) = (password.to_owned(), hash.clone());
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(p, &h).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known_user;
        if ok {
            self.verified
                .lock()
                .expect("lock")
                .insert(user.to_owned(), password.to_owned());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn checks_bcrypt_and_remembers() {
        let a = BasicAuth::new([("prom".to_owned(), bcrypt::hash("s3cret", 4).unwrap())].into())
            .unwrap();
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(a.allows(Some(&header("prom", "s3cret"))).await);
        assert!(a.allows(Some(&header("prom", "s3cret"))).await, "cached");
        assert!(!a.allows(Some(&header("prom", "wrong"))).await);
        assert!(!a.allows(Some(&header("eve", "s3cret"))).await);
        assert!(!a.allows(Some("Bearer x")).await);
        assert!(!a.allows(None).await);
        assert!(BasicAuth::new(BTreeMap::new()).is_none());
    }

    /// An unknown user costs a bcrypt verification at the users' cost, as
    /// a wrong password does (counted, not timed: timing belongs in
    /// benchmarks).
    #[tokio::test(flavor = "current_thread")]
    async fn unknown_users_cost_what_wrong_passwords_do() {
        let a = BasicAuth::new([("prom".to_owned(), bcrypt::hash("s3cret", 6).unwrap())].into())
            .unwrap();
        assert!(a.dummy.starts_with("$2b$06$"), "{}", a.dummy);
        let header = |u: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:guess"))
            )
        };
        assert!(!a.allows(Some(&header("prom"))).await);
        assert_eq!(a.verifications.load(Ordering::Relaxed), 1);
        assert!(!a.allows(Some(&header("eve"))).await);
        assert_eq!(
            a.verifications.load(Ordering::Relaxed),
            2,
            "an unknown user is verified too"
        );
    }
}
