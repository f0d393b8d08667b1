//! When a delivery that failed is tried again: the Standard Webhooks
//! schedule (at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about
//! 27.5 hours in all), each wait up to 10 % longer at random so endpoints
//! that failed together are not all tried at once. A `Retry-After` the
//! endpoint sent makes the wait at least that long (at most a day).

use chrono::Duration;

/// The waits before the 2nd, 3rd, … attempt, in seconds.
const WAITS: [i64; 7] = [5, 300, 1800, 7200, 18000, 36000, 36000];
/// Most attempts a delivery gets.
pub const MAX_ATTEMPTS: usize = WAITS.len() + 1;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER_SECS: f64 = 86_400.0;

/// The wait before the next attempt after `made` attempts failed (None:
/// no attempt is left).
pub fn next_wait(made: usize, retry_after: Option<f64>) -> Option<Duration> {
    let base = *WAITS.get(made.checked_sub(1)?)?;
    let jitter = rand::random_range(0..=base * 100 / 1000);
    let mut ms = (base + jitter) * 1000;
    if let Some(ra) = retry_after {
        ms = ms.max((ra.clamp(0.0, MAX_RETRY_AFTER_SECS) * 1000.0) as i64);
    }
    Some(Duration::milliseconds(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_follow_the_schedule_with_some_jitter_and_end() {
        for (made, base) in [(1, 5), (2, 300), (7, 36000)] {
            let w = next_wait(made, None).map_or(0, |d| d.num_milliseconds());
            assert!((base * 1000..=base * 1100).contains(&w), "{made}: {w}");
        }
        assert_eq!(next_wait(MAX_ATTEMPTS, None), None);
        assert_eq!(next_wait(0, None), None);
        // Retry-After lengthens a wait, never shortens it, at most a day.
        let w = next_wait(1, Some(120.0)).map_or(0, |d| d.num_seconds());
        assert_eq!(w, 120);
        let w = next_wait(1, Some(1e9)).map_or(0, |d| d.num_seconds());
        assert_eq!(w, 86_400);
        let w = next_wait(2, Some(1.0)).map_or(0, |d| d.num_seconds());
        assert!(w >= 300);
    }
}
