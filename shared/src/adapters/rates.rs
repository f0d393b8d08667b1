//! Request rates kept in the process's memory: right where one process
//! serves the API (`weft dev`), whose limiters then cost no write.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::{ApiKeyId, Rate, Verdict, WorkspaceId, gcra};
use crate::ports::{RateStore, StoreError, StoreResult, Taken};

/// Most limiters kept; past it, those whose burst is whole are dropped.
const MOST_KEPT: usize = 100_000;

#[derive(Default)]
pub struct MemoryRates {
    tats: Mutex<HashMap<String, i64>>,
}

#[async_trait]
impl RateStore for MemoryRates {
    async fn take_request(
        &self,
        ws: &WorkspaceId,
        key: &ApiKeyId,
        (ws_rate, key_rate): (Rate, Rate),
        now: i64,
    ) -> StoreResult<Taken> {
        let mut tats = self
            .tats
            .lock()
            .map_err(|_| StoreError::Unavailable("rate limiter lock poisoned".into()))?;
        if tats.len() >= MOST_KEPT {
            tats.retain(|_, tat| *tat > now);
        }
        let (wk, kk) = (format!("w:{ws}"), format!("k:{key}"));
        let taken = Taken {
            workspace: gcra(tats.get(&wk).copied(), now, ws_rate),
            key: gcra(tats.get(&kk).copied(), now, key_rate),
        };
        if let (Verdict::Allowed { tat: w, .. }, Verdict::Allowed { tat: k, .. }) =
            (taken.workspace, taken.key)
        {
            tats.insert(wk, w);
            tats.insert(kk, k);
        }
        Ok(taken)
    }
}
