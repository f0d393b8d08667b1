//! What a tick does about one due schedule: which fire times start a run,
//! whether the previous run is cancelled first, and the schedule as it is
//! after (next fire time, a buffered one, when it is next due). Pure: the
//! tick (`App::fire_schedules`) carries it out, the same in both modes.

use chrono::{DateTime, Duration, Utc};

use super::Timing;
use crate::domain::{CatchUp, Overlap, Schedule};

/// Most missed fire times one tick starts runs for (`CatchUp::All`).
pub const MAX_CATCH_UP: usize = 10;
/// How late a fire time may be handled and still count as on time when
/// missed ones are not caught up (`CatchUp::None`): ticks come every
/// minute on AWS.
pub const GRACE_SECS: i64 = 120;
/// How soon a schedule holding a buffered fire time is looked at again.
pub const BUFFER_RECHECK_SECS: i64 = 30;

/// The runs a tick starts for a schedule.
#[derive(Debug, Default, PartialEq)]
pub struct Fire {
    /// Fire times to start a run for, oldest first.
    pub start: Vec<DateTime<Utc>>,
    /// The previous run is cancelled first (`Overlap::CancelOther`).
    pub cancel_previous: bool,
}

/// The tick at `now` for `s`, whose last run is still active when
/// `previous_active`. The schedule returned is at the next revision.
pub fn plan(
    s: &Schedule,
    timing: &Timing,
    now: DateTime<Utc>,
    previous_active: bool,
) -> (Fire, Schedule) {
    let mut next = s.clone();
    next.revision += 1;
    next.updated_at = now;
    let mut fire = Fire::default();
    if s.paused {
        next.next_fire_at = None;
        next.due_at = None;
        return (fire, next);
    }
    let mut due = match s.next_fire_at.filter(|t| *t <= now) {
        Some(first) => timing.recent(first, now, MAX_CATCH_UP),
        None => Vec::new(),
    };
    match s.catch_up {
        CatchUp::All => {}
        CatchUp::Latest => {
            due.drain(..due.len().saturating_sub(1));
        }
        CatchUp::None => {
            due.retain(|t| (now - *t).num_seconds() <= GRACE_SECS);
            due.drain(..due.len().saturating_sub(1));
        }
    }
    // Runs of one schedule overlap each other too: past `Allow`, only the
    // latest fire time counts.
    if s.overlap != Overlap::Allow {
        due.drain(..due.len().saturating_sub(1));
    }
    let mut buffered = s.buffered_fire_at;
    match (previous_active, s.overlap) {
        (true, Overlap::Allow) | (false, _) => {
            if !previous_active && let Some(b) = buffered.take() {
                // The buffered one starts now unless a newer one replaces it.
                if s.overlap == Overlap::Allow || due.is_empty() {
                    fire.start.push(b);
                }
            }
            fire.start.extend(due);
        }
        (true, Overlap::Skip) => {}
        (true, Overlap::BufferOne) => {
            if let Some(last) = due.last() {
                buffered = Some(buffered.map_or(*last, |b| b.max(*last)));
            }
        }
        (true, Overlap::CancelOther) => {
            fire.cancel_previous = !due.is_empty();
            fire.start.extend(due);
        }
    }
    fire.start.dedup();
    next.buffered_fire_at = buffered;
    next.next_fire_at = timing.next_after(now);
    let recheck = buffered.map(|_| now + Duration::seconds(BUFFER_RECHECK_SECS));
    next.due_at = match (next.next_fire_at, recheck) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (fire, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ScheduleId, WorkflowId, WorkspaceId};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hourly(catch_up: CatchUp, overlap: Overlap, next: &str) -> (Schedule, Timing) {
        let at = utc("2026-11-01T00:00:00Z");
        let s = Schedule {
            workspace_id: WorkspaceId::generate(),
            id: ScheduleId::generate(),
            workflow_id: WorkflowId::from_string("wf"),
            spec: "@hourly".into(),
            timezone: "UTC".into(),
            input: serde_json::json!({}),
            paused: false,
            catch_up,
            overlap,
            next_fire_at: Some(utc(next)),
            last_fire_at: None,
            last_run_id: None,
            buffered_fire_at: None,
            due_at: Some(utc(next)),
            created_at: at,
            updated_at: at,
            revision: 1,
        };
        (s, Timing::parse("@hourly", "UTC", at).unwrap())
    }

    #[test]
    fn a_fire_time_on_time_starts_one_run_and_moves_on() {
        let (s, t) = hourly(CatchUp::Latest, Overlap::Allow, "2026-12-01T10:00:00Z");
        let now = utc("2026-12-01T10:00:20Z");
        let (fire, next) = plan(&s, &t, now, false);
        assert_eq!(fire.start, [utc("2026-12-01T10:00:00Z")]);
        assert_eq!(next.next_fire_at, Some(utc("2026-12-01T11:00:00Z")));
        assert_eq!(next.due_at, next.next_fire_at);
        assert_eq!(next.revision, 2);
        // Not yet due: nothing.
        let (fire, _) = plan(&next, &t, utc("2026-12-01T10:59:00Z"), false);
        assert_eq!(fire, Fire::default());
    }

    #[test]
    fn missed_fire_times_follow_the_catch_up_policy() {
        let now = utc("2026-12-01T10:30:00Z");
        let (s, t) = hourly(CatchUp::Latest, Overlap::Allow, "2026-12-01T04:00:00Z");
        assert_eq!(
            plan(&s, &t, now, false).0.start,
            [utc("2026-12-01T10:00:00Z")]
        );
        let (s, t) = hourly(CatchUp::All, Overlap::Allow, "2026-12-01T07:00:00Z");
        assert_eq!(plan(&s, &t, now, false).0.start.len(), 4);
        let (s, t) = hourly(CatchUp::All, Overlap::Allow, "2026-11-01T00:00:00Z");
        let start = plan(&s, &t, now, false).0.start;
        assert_eq!(start.len(), MAX_CATCH_UP);
        assert_eq!(start.last(), Some(&utc("2026-12-01T10:00:00Z")));
        let (s, t) = hourly(CatchUp::None, Overlap::Allow, "2026-12-01T04:00:00Z");
        assert!(plan(&s, &t, now, false).0.start.is_empty(), "too late");
        let (s, t) = hourly(CatchUp::None, Overlap::Allow, "2026-12-01T10:00:00Z");
        let late = utc("2026-12-01T10:01:30Z");
        assert_eq!(
            plan(&s, &t, late, false).0.start,
            [utc("2026-12-01T10:00:00Z")]
        );
    }

    #[test]
    fn overlap_with_an_active_run_follows_the_overlap_policy() {
        let now = utc("2026-12-01T10:00:10Z");
        let ten = utc("2026-12-01T10:00:00Z");
        let (s, t) = hourly(CatchUp::Latest, Overlap::Allow, "2026-12-01T10:00:00Z");
        assert_eq!(plan(&s, &t, now, true).0.start, [ten]);
        let (s, t) = hourly(CatchUp::Latest, Overlap::Skip, "2026-12-01T10:00:00Z");
        let (fire, next) = plan(&s, &t, now, true);
        assert!(fire.start.is_empty());
        assert_eq!(next.next_fire_at, Some(utc("2026-12-01T11:00:00Z")));
        let (s, t) = hourly(
            CatchUp::Latest,
            Overlap::CancelOther,
            "2026-12-01T10:00:00Z",
        );
        let (fire, _) = plan(&s, &t, now, true);
        assert_eq!((fire.start, fire.cancel_previous), (vec![ten], true));

        // Buffered while the run goes on, started once it has ended.
        let (s, t) = hourly(CatchUp::Latest, Overlap::BufferOne, "2026-12-01T10:00:00Z");
        let (fire, held) = plan(&s, &t, now, true);
        assert!(fire.start.is_empty());
        assert_eq!(held.buffered_fire_at, Some(ten));
        let soon = now + Duration::seconds(BUFFER_RECHECK_SECS);
        assert_eq!(held.due_at, Some(soon), "looked at again soon");
        let (fire, still) = plan(&held, &t, soon, true);
        assert!(fire.start.is_empty());
        assert_eq!(still.buffered_fire_at, Some(ten));
        let (fire, done) = plan(&still, &t, soon + Duration::seconds(30), false);
        assert_eq!(fire.start, [ten]);
        assert_eq!(done.buffered_fire_at, None);
        assert_eq!(done.due_at, Some(utc("2026-12-01T11:00:00Z")));
    }

    #[test]
    fn a_paused_schedule_is_not_due() {
        let (mut s, t) = hourly(CatchUp::Latest, Overlap::Allow, "2026-12-01T10:00:00Z");
        s.paused = true;
        let (fire, next) = plan(&s, &t, utc("2026-12-01T12:00:00Z"), false);
        assert_eq!(fire, Fire::default());
        assert_eq!((next.due_at, next.next_fire_at), (None, None));
    }
}
