//! Codes of the last few activations, keyed by ID and parameter version, in front of
//! Parameter Store: the hot path reads a code from here, not from AWS.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::aws::parameters::CodeVault;
use crate::error::VendError;
use crate::secret::ActivationCode;

pub struct Codes {
    vault: CodeVault,
    cache: CodeCache,
    /// Reads in flight: a process's requests that meet a new activation at once
    /// (a block of slots, a storm after a rotation elsewhere) share one GetParameter,
    /// which spends Parameter Store's account-wide 40 reads per second, and its
    /// outcome: when it fails (throttled past the SDK's retries), all of them answer
    /// with that failure rather than each reading again.
    reads: InFlight<(String, i64), Result<Option<ActivationCode>, VendError>>,
}

impl Codes {
    pub fn new(vault: CodeVault) -> Self {
        Self {
            vault,
            cache: CodeCache::default(),
            reads: InFlight::default(),
        }
    }

    /// The code stored with `activation_id` at `version`; `None` when Parameter
    /// Store no longer holds that version (or it holds another activation).
    pub async fn code_for(
        &self,
        pool: &str,
        activation_id: &str,
        version: i64,
    ) -> Result<Option<ActivationCode>, VendError> {
        if let Some(code) = self.cache.get(activation_id, version) {
            return Ok(Some(code));
        }
        self.reads
            .share((activation_id.to_owned(), version), || {
                self.read(pool, activation_id, version)
            })
            .await
    }

    /// The one read of a code that a process's concurrent requests for it share.
    async fn read(&self, pool: &str, activation_id: &str, version: i64) -> Result<Option<ActivationCode>, VendError> {
        // A read that ended between the caller's look at the cache and now left it here.
        if let Some(code) = self.cache.get(activation_id, version) {
            return Ok(Some(code));
        }
        let code = self.vault.fetch(pool, activation_id, version).await?;
        if let Some(code) = &code {
            self.cache.insert(activation_id, version, code.clone());
        }
        Ok(code)
    }

    /// Stores a new activation's code; returns the parameter version that holds it.
    pub async fn store(&self, pool: &str, activation_id: &str, code: &ActivationCode) -> Result<i64, VendError> {
        let version = self.vault.store(pool, activation_id, code).await?;
        self.cache.insert(activation_id, version, code.clone());
        Ok(version)
    }
}

/// One read per key at a time. The callers that ask for a key while its read is in
/// flight wait for that read and all get its outcome, a failure included; the read
/// leaves the map as it ends, so the next caller after it reads afresh. (Nothing is
/// remembered past the read: what succeeded is the code cache's to keep.)
struct InFlight<K, T> {
    reads: Mutex<HashMap<K, Arc<OnceCell<T>>>>,
}

impl<K, T> Default for InFlight<K, T> {
    fn default() -> Self {
        Self {
            reads: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, T: Clone> InFlight<K, T> {
    /// The outcome of the read of `key` in flight, or of `read` when none is.
    async fn share<F: Future<Output = T>>(&self, key: K, read: impl FnOnce() -> F) -> T {
        let cell = self.map().entry(key.clone()).or_default().clone();
        cell.get_or_init(|| async {
            let outcome = read().await;
            // Ended: whoever holds `cell` by now waited on this read; later callers
            // start their own. (A read whose caller went away mid-flight leaves the
            // cell empty: a waiter then reads in its place.)
            self.forget(&key, &cell);
            outcome
        })
        .await
        .clone()
    }

    fn forget(&self, key: &K, cell: &Arc<OnceCell<T>>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(key);
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<T>>>> {
        self.reads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct CodeCache {
    entries: Mutex<VecDeque<(String, i64, ActivationCode)>>,
}

impl CodeCache {
    const CAPACITY: usize = 8;

    fn get(&self, activation_id: &str, version: i64) -> Option<ActivationCode> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|(id, v, _)| id == activation_id && *v == version)
            .map(|(_, _, code)| code.clone())
    }

    fn insert(&self, activation_id: &str, version: i64, code: ActivationCode) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.iter().any(|(id, v, _)| id == activation_id && *v == version) {
            return;
        }
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back((activation_id.to_owned(), version, code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::join_all;
    use tokio::sync::Semaphore;

    fn throttled() -> VendError {
        VendError::Throttled {
            operation: "SSM.GetParameter",
        }
    }

    #[tokio::test]
    async fn the_requests_waiting_on_a_failed_read_share_its_failure_and_the_next_request_reads_again() {
        let reads: InFlight<&str, Result<&str, VendError>> = InFlight::default();
        let calls = AtomicUsize::new(0);
        // Closed once every request below is waiting: the read's answer arrives.
        let answer = Semaphore::new(0);
        let failing_read = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = answer.acquire().await;
            Err(throttled())
        };
        let (outcomes, ()) = tokio::join!(join_all((0..8).map(|_| reads.share("a", failing_read))), async {
            tokio::task::yield_now().await;
            answer.close();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one read for the 8 requests");
        for outcome in &outcomes {
            let error = outcome.as_ref().expect_err("the read failed");
            assert_eq!((error.status().as_u16(), error.code()), (503, "Throttled"));
        }
        assert!(reads.map().is_empty(), "a failed read is not kept");

        let next = reads
            .share("a", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok("code")
            })
            .await;
        assert_eq!(next.ok(), Some("code"));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the next request read afresh");
    }

    #[tokio::test]
    async fn the_requests_waiting_on_a_read_share_its_code() {
        let reads: InFlight<(String, i64), Result<u32, VendError>> = InFlight::default();
        let calls = AtomicUsize::new(0);
        let answer = Semaphore::new(0);
        let read = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = answer.acquire().await;
            Ok(7)
        };
        let key = ("a".to_owned(), 1);
        let (outcomes, ()) = tokio::join!(join_all((0..8).map(|_| reads.share(key.clone(), read))), async {
            tokio::task::yield_now().await;
            answer.close();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(outcomes.iter().all(|o| matches!(o, Ok(7))));
    }

    #[test]
    fn the_code_cache_pairs_ids_with_their_own_version_only() {
        let cache = CodeCache::default();
        cache.insert("a", 1, ActivationCode::new("code-a1"));
        assert_eq!(cache.get("a", 1), Some(ActivationCode::new("code-a1")));
        assert_eq!(cache.get("a", 2), None);
        assert_eq!(cache.get("b", 1), None);
    }

    #[test]
    fn the_code_cache_forgets_the_oldest_first() {
        let cache = CodeCache::default();
        for v in 0..=CodeCache::CAPACITY as i64 {
            cache.insert("a", v, ActivationCode::new(format!("c{v}")));
        }
        assert_eq!(cache.get("a", 0), None);
        assert!(cache.get("a", CodeCache::CAPACITY as i64).is_some());
    }
}
