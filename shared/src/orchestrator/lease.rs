//! Leases: where the process driving a run can vanish (on AWS, an Express
//! execution that times out, a Standard one that is stopped, a start that
//! never happened, an at-least-once start that happened twice), a run is
//! held by one execution at a time, which must come back to it before the
//! lease runs out. Every pass of the holder renews it; a pass by anyone else
//! while it holds finds the run taken and stops. A run whose lease ran out
//! is stalled, and the sweeper (`aws::Stack::sweep`, on a schedule) hands it
//! to a new execution.
//!
//! These are the rules; the plan function and the sweeper carry them out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{Lease, RunRecord};

/// How long a run may wait for the first pass of a new (or resumed)
/// execution.
pub const START_GRACE: Duration = Duration::from_secs(10 * 60);
/// How long after it said it would be back a driver is given.
pub const RENEW_MARGIN: Duration = Duration::from_secs(2 * 60);
/// Leases move in steps of this, so most passes leave them (and the index
/// of active runs) alone.
pub const RENEW_STEP: Duration = Duration::from_secs(5 * 60);
/// How often the sweeper resumes a run that makes no progress before it
/// fails the run instead.
pub const MAX_SWEEPS: u32 = 5;
/// History events a Standard execution may use before the run continues in
/// a fresh one (Step Functions ends an execution at 25,000).
pub const MAX_EVENTS: u32 = 20_000;
/// Longest a run can wait in one go (a task token's timeout, a Wait).
pub const MAX_WAIT: Duration = Duration::from_secs(364 * 24 * 3600);

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The lease a new run is created with: anyone's to take, for a while.
pub fn initial(now: DateTime<Utc>) -> Lease {
    Lease {
        owner: None,
        until: after(now, START_GRACE),
        generation: 0,
        events: 0,
        sweeps: 0,
    }
}

/// How a lease names its holder: a short digest of the execution's ARN
/// (the run's item is rewritten on every pass, and is billed by its size).
pub fn owner_id(execution: &str) -> String {
    // FNV-1a: stable across releases, unlike the standard library's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in execution.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// True if the execution `me` holds the lease.
pub fn holds(lease: &Lease, me: &str) -> bool {
    lease.owner.as_deref() == Some(owner_id(me).as_str())
}

/// True if another execution holds the run now.
pub fn held_elsewhere(lease: &Lease, me: &str, now: DateTime<Utc>) -> bool {
    lease.owner.is_some() && !holds(lease, me) && lease.until > now
}

/// The one rule for "the driver is gone": an unfinished run whose lease ran
/// out.
pub fn stalled(run: &RunRecord, now: DateTime<Utc>) -> bool {
    !run.status.is_terminal() && run.lease.as_ref().is_some_and(|l| l.until <= now)
}

/// When the driver must have come back: once the longest attempt it hands
/// out has had its time, at the run's next timer, or, when only an outside
/// event can move the run, after the longest wait.
pub fn due(
    now: DateTime<Utc>,
    longest_attempt: Option<Duration>,
    wake_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match (longest_attempt, wake_at) {
        (Some(d), _) => after(now, d),
        (None, Some(at)) => at.max(now),
        (None, None) => after(now, MAX_WAIT),
    }
}

/// Takes (or keeps) the lease for `me`, long enough to be back by `due`.
/// True if the lease changed (and must be written).
pub fn take(lease: &mut Lease, me: &str, due: DateTime<Utc>) -> bool {
    let mut changed = false;
    if !holds(lease, me) {
        lease.owner = Some(owner_id(me));
        lease.events = 0;
        changed = true;
    }
    let needed = after(due, RENEW_MARGIN);
    if lease.until < needed {
        lease.until = round_up(after(needed, RENEW_STEP));
        changed = true;
    }
    changed
}

fn round_up(t: DateTime<Utc>) -> DateTime<Utc> {
    let step = RENEW_STEP.as_secs() as i64;
    let secs = t.timestamp();
    let rounded = secs + (step - secs.rem_euclid(step)) % step;
    DateTime::from_timestamp(rounded, 0).unwrap_or(t)
}

/// History events one pass of a Standard execution adds, roughly: the
/// plan task and the choice, then a task per dispatched step (a Map adds
/// a few per item).
pub fn events_for_pass(dispatched: usize) -> u32 {
    let per_step = 8u32;
    12u32.saturating_add(per_step.saturating_mul(dispatched.min(u32::MAX as usize) as u32))
}

/// The ARN a Standard execution of `machine` named `name` has.
pub fn execution_arn(machine: &str, name: &str) -> String {
    format!(
        "{}:{name}",
        machine.replacen(":stateMachine:", ":execution:", 1)
    )
}

/// Hands the lease to the next Standard execution of the run, which the
/// caller then starts and which must be back by `due` (it may carry out a
/// wait before it plans): returns its name (`{run}-{generation}`).
pub fn hand_over(
    lease: &mut Lease,
    machine: &str,
    run_id: &str,
    now: DateTime<Utc>,
    due: DateTime<Utc>,
) -> String {
    lease.generation = lease.generation.saturating_add(1);
    let name = format!("{run_id}-{}", lease.generation);
    lease.owner = Some(owner_id(&execution_arn(machine, &name)));
    lease.until = after(now, START_GRACE).max(round_up(after(due, RENEW_MARGIN)));
    lease.events = 0;
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 7).unwrap()
    }

    #[test]
    fn one_holder_at_a_time() {
        let now = t0();
        let mut l = initial(now);
        assert!(!held_elsewhere(&l, "a", now));
        assert!(take(
            &mut l,
            "a",
            due(now, Some(Duration::from_secs(60)), None)
        ));
        assert!(held_elsewhere(&l, "b", now));
        assert!(!held_elsewhere(&l, "a", now));
        // Once it runs out, anyone may take it.
        assert!(!held_elsewhere(&l, "b", l.until));
    }

    #[test]
    fn renewals_move_in_steps() {
        let now = t0();
        let mut l = initial(now - chrono::Duration::minutes(20));
        assert!(take(
            &mut l,
            "a",
            due(now, Some(Duration::from_secs(60)), None)
        ));
        assert_eq!(l.until.timestamp() % 300, 0);
        assert!(l.until >= now + chrono::Duration::minutes(8));
        // A pass a little later needs no more time: nothing to write.
        let later = now + chrono::Duration::seconds(30);
        assert!(!take(
            &mut l,
            "a",
            due(later, Some(Duration::from_secs(60)), None)
        ));
        // A long timer moves it.
        let wake = now + chrono::Duration::hours(3);
        assert!(take(&mut l, "a", due(later, None, Some(wake))));
        assert!(l.until > wake);
    }

    #[test]
    fn hand_over_names_the_next_execution() {
        let machine = "arn:aws:states:us-east-1:123456789012:stateMachine:weft-dag-driver";
        let mut l = initial(t0());
        let name = hand_over(&mut l, machine, "run_x", t0(), t0());
        assert_eq!(name, "run_x-1");
        assert_eq!(l.until, t0() + chrono::Duration::minutes(10));
        assert!(holds(
            &l,
            "arn:aws:states:us-east-1:123456789012:execution:weft-dag-driver:run_x-1"
        ));
        // Handed over with a wait to carry out: held until that ends.
        let wait_ends = t0() + chrono::Duration::hours(1);
        assert_eq!(
            hand_over(&mut l, machine, "run_x", t0(), wait_ends),
            "run_x-2"
        );
        assert!(l.until > wait_ends);
    }

    #[test]
    fn stalled_means_unfinished_past_its_lease() {
        let now = t0();
        let mut run: RunRecord = serde_json::from_value(serde_json::json!({
            "workspace_id": "ws_a", "id": "run_a", "workflow_id": "wf", "workflow_version": 1,
            "status": "RUNNING", "input": {}, "created_at": now, "revision": 1
        }))
        .unwrap();
        assert!(!stalled(&run, now), "no lease: nothing to sweep");
        run.lease = Some(initial(now));
        assert!(!stalled(&run, now));
        assert!(stalled(&run, now + chrono::Duration::minutes(11)));
        run.status = crate::domain::RunStatus::Completed;
        assert!(!stalled(&run, now + chrono::Duration::minutes(11)));
    }
}
