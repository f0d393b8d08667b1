//! One read-change-write of a run, tried again while other writers win:
//! every such loop (a driver pass, recording a result, failing a run, a
//! cancel, an approval, a lease) goes through `retry_conflicts`, with one
//! bound and one pause between tries.

use std::future::Future;
use std::time::Duration;

/// Most times one read-change-write is tried while other writers win.
pub const WRITE_TRIES: u32 = 50;

/// How one try ended.
pub enum Tried<T> {
    /// Written (or nothing to write): done.
    Done(T),
    /// Another writer got there first (a `StoreError::Conflict`): read
    /// again.
    Conflict,
}

/// Runs `once` until it is done, at most `WRITE_TRIES` times; between
/// tries after the first conflict, a short random pause that grows (up to
/// 50 ms), so writers racing each other spread out. None if every try met a
/// conflict.
pub async fn retry_conflicts<T, E, F, Fut>(mut once: F) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Tried<T>, E>>,
{
    for n in 0..WRITE_TRIES {
        if n > 1 {
            let most = 1u64 << n.min(6).saturating_sub(1);
            let ms = rand::random_range(1..=most.min(50));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Tried::Done(t) = once().await? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn tries_again_on_conflicts_and_stops_at_the_bound() {
        let tries = AtomicU32::new(0);
        let won: Result<Option<u32>, ()> = retry_conflicts(|| async {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if n < 3 {
                Tried::Conflict
            } else {
                Tried::Done(n)
            })
        })
        .await;
        assert_eq!(won, Ok(Some(3)));

        tries.store(0, Ordering::SeqCst);
        let lost: Result<Option<()>, ()> = retry_conflicts(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Ok(Tried::Conflict)
        })
        .await;
        assert_eq!(lost, Ok(None));
        assert_eq!(tries.load(Ordering::SeqCst), WRITE_TRIES);

        // An error ends it at once.
        tries.store(0, Ordering::SeqCst);
        let failed: Result<Option<()>, &str> = retry_conflicts(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err("down")
        })
        .await;
        assert_eq!(failed, Err("down"));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
