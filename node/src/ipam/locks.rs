//! Async mutexes by key (one per pool, one per owner), created on first use
//! and dropped when nobody holds or waits for them.
//!
//! The map is only ever looked up by key, never iterated, so its hash
//! order cannot reach the order of API writes (the simulator's
//! determinism rule); who gets a contended lock next is tokio's FIFO
//! order of waiters.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A set of async mutexes by key.
#[derive(Debug)]
pub(crate) struct KeyedLocks<K: Eq + Hash + Clone> {
    map: Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// A held lock; releasing it drops the entry when nobody else uses it.
pub(crate) struct KeyedGuard<K: Eq + Hash + Clone> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    map: Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits for the lock of `key`.
    pub(crate) async fn lock(&self, key: &K) -> KeyedGuard<K> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        KeyedGuard {
            guard: Some(guard),
            key: key.clone(),
            map: self.map.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_entries_go_away() {
        let locks: Arc<KeyedLocks<String>> = Arc::default();
        let a = locks.lock(&"a".to_string()).await;
        // Another key is independent.
        let b = locks.lock(&"b".to_string()).await;
        drop(b);
        // The same key waits.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(&"a".to_string()).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
