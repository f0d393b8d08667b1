//! Slots of the embedded process (runs advanced at once, I/O attempts in
//! flight) shared by workspaces so that none holds more than its share:
//! one workspace's slow steps cannot make every other workspace wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::WorkspaceId;

/// Workspaces remembered before idle ones are forgotten.
const REMEMBERED: usize = 1024;

pub(super) struct FairSlots {
    all: Arc<Semaphore>,
    share: usize,
    by_workspace: Mutex<HashMap<WorkspaceId, Arc<Semaphore>>>,
}

/// One slot, held until dropped.
pub(super) struct Slot {
    _workspace: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl FairSlots {
    /// `total` slots, at most `share` of them held by one workspace.
    pub fn new(total: usize, share: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(total)),
            share: share.clamp(1, total.max(1)),
            by_workspace: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot: first one of the workspace's share, then one of
    /// all (always in that order, so waiting never deadlocks).
    pub async fn acquire(&self, ws: &WorkspaceId) -> Option<Slot> {
        let mine = {
            let mut by = self.by_workspace.lock().ok()?;
            if by.len() >= REMEMBERED {
                let share = self.share;
                by.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < share);
            }
            by.entry(ws.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                .clone()
        };
        let workspace = mine.acquire_owned().await.ok()?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _workspace: workspace,
            _all: all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_workspace_cannot_take_every_slot() {
        let slots = Arc::new(FairSlots::new(4, 2));
        let greedy = WorkspaceId::from_string("ws_greedy");
        let other = WorkspaceId::from_string("ws_other");
        let a = slots.acquire(&greedy).await;
        let b = slots.acquire(&greedy).await;
        assert!(a.is_some() && b.is_some());
        // Its third waits for one of its own to end…
        let third = {
            let (slots, greedy) = (slots.clone(), greedy.clone());
            tokio::spawn(async move { slots.acquire(&greedy).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        // …while another workspace still gets slots at once.
        let c = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&other)).await;
        assert!(matches!(c, Ok(Some(_))));
        drop(a);
        assert!(third.await.unwrap_or(false));
    }
}
