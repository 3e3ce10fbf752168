//! Codes of the last few activations, keyed by ID and parameter version, in front of
//! KMS and Parameter Store: the hot path reads a code from here, not from AWS. A code
//! the pool item carries sealed (`SealedCode`) is opened with one KMS Decrypt per
//! process and activation; Parameter Store, the store of record, is read only for an
//! activation without one, or one KMS refuses to open.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::aws::keys::CodeKey;
use crate::aws::parameters::CodeVault;
use crate::error::VendError;
use crate::pool::state::CurrentActivation;
use crate::secret::{ActivationCode, SealedCode};

pub struct Codes {
    vault: CodeVault,
    key: CodeKey,
    cache: CodeCache,
    /// Reads in flight: a process's requests that meet a new activation at once
    /// (a block of slots, a storm after a rotation elsewhere) share one read (a KMS
    /// Decrypt of the sealed code, or a GetParameter, which spends Parameter Store's
    /// account-wide 40 reads per second) and its outcome: when it fails (throttled
    /// past the SDK's retries), all of them answer with that failure rather than each
    /// reading again.
    reads: InFlight<(String, i64), Result<Option<ActivationCode>, VendError>>,
}

/// A new activation's code as the rotation stored it.
#[derive(Debug)]
pub struct Stored {
    /// The Parameter Store version that holds it.
    pub version: i64,
    /// The code sealed for the pool item; `None` when KMS would not seal it (the
    /// activation is then read from Parameter Store, as before sealed codes).
    pub sealed: Option<SealedCode>,
}

/// Whether a failed Decrypt is worth a read of Parameter Store instead: yes, unless
/// it says "slow down" or "not now" (throttled, or no answer, after the SDK's
/// retries), which a second service would only make worse, and which answers `503`
/// with `Retry-After` like any throttle. A refusal (`AccessDenied`,
/// `InvalidCiphertext`, a disabled key, a plaintext that is no code) falls back.
pub fn falls_back_to_parameter_store(error: &VendError) -> bool {
    !matches!(
        error,
        VendError::Throttled { .. } | VendError::Unavailable { .. } | VendError::Contended { .. }
    )
}

impl Codes {
    pub fn new(vault: CodeVault, key: CodeKey) -> Self {
        Self {
            vault,
            key,
            cache: CodeCache::default(),
            reads: InFlight::default(),
        }
    }

    /// The code stored with `activation_id` at `version`: opened from `sealed` when
    /// the pool item carried it, else read from Parameter Store; `None` when
    /// Parameter Store no longer holds that version (or it holds another activation).
    pub async fn code_for(
        &self,
        pool: &str,
        activation_id: &str,
        version: i64,
        sealed: Option<&SealedCode>,
    ) -> Result<Option<ActivationCode>, VendError> {
        if let Some(code) = self.cache.get(activation_id, version) {
            return Ok(Some(code));
        }
        self.reads
            .share((activation_id.to_owned(), version), || {
                self.read(pool, activation_id, version, sealed)
            })
            .await
    }

    /// The code of the activation a slot was taken on, opened from the sealed code its
    /// pool item carried if any (`code_for`).
    pub async fn code_of(
        &self,
        pool: &str,
        activation: &CurrentActivation,
    ) -> Result<Option<ActivationCode>, VendError> {
        self.code_for(
            pool,
            &activation.id,
            activation.parameter_version,
            activation.sealed_code.as_ref(),
        )
        .await
    }

    /// The one read of a code that a process's concurrent requests for it share.
    async fn read(
        &self,
        pool: &str,
        activation_id: &str,
        version: i64,
        sealed: Option<&SealedCode>,
    ) -> Result<Option<ActivationCode>, VendError> {
        // A read that ended between the caller's look at the cache and now left it here.
        if let Some(code) = self.cache.get(activation_id, version) {
            return Ok(Some(code));
        }
        let opened = match sealed {
            Some(sealed) => match self.key.open(pool, activation_id, sealed).await {
                Ok(code) => Some(code),
                Err(e) if falls_back_to_parameter_store(&e) => {
                    tracing::warn!(
                        pool,
                        activation_id,
                        error = %e,
                        "could not open the sealed code; reading it from Parameter Store"
                    );
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let code = match opened {
            Some(code) => Some(code),
            None => self.vault.fetch(pool, activation_id, version).await?,
        };
        if let Some(code) = &code {
            self.cache.insert(activation_id, version, code.clone());
        }
        Ok(code)
    }

    /// Stores a new activation's code in Parameter Store (the store of record, first),
    /// then seals it for the pool item. A seal that fails is logged and leaves the
    /// activation without a sealed code: the rotation goes on, and its code is read
    /// from Parameter Store as before sealed codes.
    pub async fn store(&self, pool: &str, activation_id: &str, code: &ActivationCode) -> Result<Stored, VendError> {
        let version = self.vault.store(pool, activation_id, code).await?;
        self.cache.insert(activation_id, version, code.clone());
        let sealed = match self.key.seal(pool, activation_id, code).await {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                tracing::warn!(
                    pool,
                    activation_id,
                    error = %e,
                    "could not seal the code with KMS; processes will read it from Parameter Store"
                );
                None
            }
        };
        Ok(Stored { version, sealed })
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
    fn only_a_refused_decrypt_falls_back_to_parameter_store_a_throttle_answers_503() {
        let operation = "KMS.Decrypt";
        for refused in [
            "AccessDeniedException",
            "InvalidCiphertextException",
            "DisabledException",
        ] {
            let error = VendError::Aws {
                operation,
                code: refused.into(),
                detail: String::new(),
            };
            assert!(falls_back_to_parameter_store(&error), "{refused}");
        }
        assert!(falls_back_to_parameter_store(&VendError::Internal("not UTF-8".into())));
        for busy in [
            VendError::Throttled { operation },
            VendError::Unavailable {
                operation,
                detail: "no answer".into(),
            },
        ] {
            assert!(!falls_back_to_parameter_store(&busy), "{busy}");
            assert_eq!(busy.status().as_u16(), 503);
        }
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
