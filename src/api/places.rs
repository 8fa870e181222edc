//! Bounded places per key (a connection, a client), for WatchStatus
//! streams: each stream takes one place per bound and gives it back when it
//! ends. The global bound (`queue.max_watchers`) lives in [`crate::events`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::error::ApiError;
use crate::transport::auth::Caller;

/// Whose watch bound a request counts against: its token when auth is on
/// (a client may come from many addresses), else its peer's IP address
/// (not IP:port, so many connections from one host share one bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Token(usize),
    Ip(IpAddr),
}

impl ClientKey {
    pub fn of(caller: Option<&Caller>, peer: Option<SocketAddr>) -> Option<ClientKey> {
        match (caller, peer) {
            (Some(c), _) => Some(ClientKey::Token(c.token)),
            // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            (None, Some(p)) => Some(ClientKey::Ip(p.ip().to_canonical())),
            (None, None) => None,
        }
    }
}

/// At most `max` places per key. A std mutex: held only to bump a counter.
pub struct Places<K> {
    taken: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
    /// Names the bound in the refusal ("per client", "per connection").
    per: &'static str,
}

impl<K> std::fmt::Debug for Places<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("per", &self.per)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Places<K> {
    pub fn new(max: usize, per: &'static str) -> Self {
        Places {
            taken: Arc::default(),
            max,
            per,
        }
    }

    /// Takes one of `key`'s places; given back when the [`Place`] drops.
    pub fn take(&self, key: K) -> Result<Place<K>, ApiError> {
        let mut m = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_default();
        if *n >= self.max {
            return Err(ApiError::TooManyWatchers {
                max: self.max,
                per: self.per,
            });
        }
        *n += 1;
        Ok(Place {
            taken: self.taken.clone(),
            key,
        })
    }

    /// Places per key.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Keys holding a place now (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.taken.lock().unwrap().len()
    }
}

/// One place under one key.
pub struct Place<K: Hash + Eq> {
    taken: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + std::fmt::Debug> std::fmt::Debug for Place<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut m = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_key_and_given_back() {
        let p = Places::new(2, "per client");
        let a1 = p.take("a").unwrap();
        let _a2 = p.take("a").unwrap();
        assert!(matches!(
            p.take("a"),
            Err(ApiError::TooManyWatchers { max: 2, .. })
        ));
        let b = p.take("b").unwrap();
        drop(a1);
        let _a3 = p.take("a").unwrap();
        drop(b);
        assert_eq!(p.keys(), 1, "an unused key is forgotten");
    }

    #[test]
    fn clients_are_keyed_by_token_else_by_ip_alone() {
        let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            ClientKey::of(None, peer("10.0.0.1:1000")),
            ClientKey::of(None, peer("10.0.0.1:2000"))
        );
        assert_eq!(
            ClientKey::of(None, peer("[::ffff:10.0.0.1]:3000")),
            ClientKey::of(None, peer("10.0.0.1:2000"))
        );
        assert_ne!(
            ClientKey::of(None, peer("10.0.0.2:1000")),
            ClientKey::of(None, peer("10.0.0.1:1000"))
        );
        let t = Caller {
            token: 3,
            role: crate::config::Role::Submit,
        };
        assert_eq!(
            ClientKey::of(Some(&t), peer("10.0.0.1:1")),
            Some(ClientKey::Token(3))
        );
    }
}
