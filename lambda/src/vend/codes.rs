//! Codes of the last few activations, keyed by ID and parameter version, in front of
//! Parameter Store: the hot path reads a code from here, not from AWS.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::aws::parameters::CodeVault;
use crate::error::VendError;
use crate::secret::ActivationCode;

pub struct Codes {
    vault: CodeVault,
    cache: CodeCache,
    /// Fetches in flight: a process's requests that meet a new activation at once
    /// (a block of slots, a storm after a rotation elsewhere) share one GetParameter,
    /// which spends Parameter Store's account-wide 40 reads per second.
    fetches: Mutex<HashMap<(String, i64), Arc<Fetch>>>,
}

/// One read of a code from Parameter Store, awaited by every request that wants it.
type Fetch = OnceCell<Option<ActivationCode>>;

impl Codes {
    pub fn new(vault: CodeVault) -> Self {
        Self {
            vault,
            cache: CodeCache::default(),
            fetches: Mutex::new(HashMap::new()),
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
        let key = (activation_id.to_owned(), version);
        let fetch = self.in_flight().entry(key.clone()).or_default().clone();
        let code = fetch
            .get_or_try_init(|| async {
                let code = self.vault.fetch(pool, activation_id, version).await?;
                if let Some(code) = &code {
                    self.cache.insert(activation_id, version, code.clone());
                }
                Ok::<_, VendError>(code)
            })
            .await
            .cloned();
        // Done or failed: the next caller reads the cache or tries afresh.
        let mut in_flight = self.in_flight();
        if in_flight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &fetch)) {
            in_flight.remove(&key);
        }
        code
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Fetch>>> {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new activation's code; returns the parameter version that holds it.
    pub async fn store(&self, pool: &str, activation_id: &str, code: &ActivationCode) -> Result<i64, VendError> {
        let version = self.vault.store(pool, activation_id, code).await?;
        self.cache.insert(activation_id, version, code.clone());
        Ok(version)
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
