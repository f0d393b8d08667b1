//! When a schedule fires: a cron pattern read in a time zone, or a fixed
//! rate from when the schedule was made. Cron patterns are parsed and
//! evaluated by `croner` (5 or 6 fields, `@hourly`-style aliases, `L`, `W`
//! and `#`), which follows the Open Cron Pattern Specification across DST:
//! a fixed local time skipped when clocks go forward fires once, just after
//! the gap, and one that happens twice when they go back fires once
//! (patterns with ranges or steps in the hour or minute fields follow the
//! wall clock: times in a gap are skipped, and a repeated hour's times may
//! fire in both).

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// The least time between two fire times (the tick that starts runs comes
/// once a minute on AWS).
pub const MIN_INTERVAL_SECS: i64 = 60;
/// The longest `spec` accepted.
pub const MAX_SPEC_LEN: usize = 200;

/// A parsed schedule spec.
#[derive(Clone, Debug)]
pub enum Timing {
    Cron {
        cron: Box<Cron>,
        tz: Tz,
    },
    /// Every `every`, counted from `anchor`.
    Rate {
        every: Duration,
        anchor: DateTime<Utc>,
    },
}

impl Timing {
    /// Reads `spec` in `timezone`; `anchor` is where a rate counts from.
    /// The error says what is wrong, for a person.
    pub fn parse(spec: &str, timezone: &str, anchor: DateTime<Utc>) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.is_empty() || spec.len() > MAX_SPEC_LEN {
            return Err(format!(
                "a schedule is a cron pattern such as \"0 9 * * MON-FRI\" or a rate such as \"rate(15 minutes)\" (at most {MAX_SPEC_LEN} characters)"
            ));
        }
        let tz = Tz::from_str(timezone).map_err(|_| {
            format!("`{timezone}` is not an IANA time zone (such as \"Europe/Berlin\" or \"UTC\")")
        })?;
        let timing = match spec.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            // Counted from the whole second (fire times read as people
            // write them).
            Some(rate) => Timing::Rate {
                every: parse_rate(rate)?,
                anchor: chrono::SubsecRound::trunc_subsecs(anchor, 0),
            },
            None => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(spec)
                    .map_err(|e| format!("`{spec}` is not a cron pattern: {e}"))?;
                Timing::Cron {
                    cron: Box::new(cron),
                    tz,
                }
            }
        };
        // Fire times at least a minute apart, and at least one ahead.
        let mut times = timing.upcoming(anchor, 8).into_iter();
        let Some(mut prev) = times.next() else {
            return Err(format!("`{spec}` never fires"));
        };
        for t in times {
            if (t - prev).num_seconds() < MIN_INTERVAL_SECS {
                return Err(format!(
                    "`{spec}` fires more often than once a minute; a schedule fires at most once a minute"
                ));
            }
            prev = t;
        }
        Ok(timing)
    }

    /// The first fire time after `t` (None: there is none).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|n| n.with_timezone(&Utc)),
            Timing::Rate { every, anchor } => {
                let step = every.num_milliseconds().max(1);
                let since = (t - *anchor).num_milliseconds();
                let k = if since < 0 { 0 } else { since / step + 1 };
                Some(*anchor + Duration::milliseconds(k.saturating_mul(step)))
            }
        }
    }

    /// The last `n` fire times at or before `now` and at or after `from`,
    /// oldest first (however many were missed, this looks at `n`).
    pub fn recent(&self, from: DateTime<Utc>, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out: Vec<DateTime<Utc>> = match self {
            Timing::Cron { cron, tz } => cron
                .iter_from(now.with_timezone(tz), croner::Direction::Backward)
                .take(n)
                .map(|t| t.with_timezone(&Utc))
                .take_while(|t| *t >= from)
                .collect(),
            Timing::Rate { every, anchor } => {
                let step = every.num_milliseconds().max(1);
                let since = (now - *anchor).num_milliseconds();
                if since < 0 {
                    Vec::new()
                } else {
                    let last = since / step;
                    (0..n as i64)
                        .map_while(|i| last.checked_sub(i).filter(|k| *k >= 0))
                        .map(|k| *anchor + Duration::milliseconds(k.saturating_mul(step)))
                        .take_while(|t| *t >= from)
                        .collect()
                }
            }
        };
        out.reverse();
        out
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, mut t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_after(t) {
                Some(next) if next > t => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// `15 minutes`, `1 hour`, `2 days`.
fn parse_rate(rate: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`rate({rate})` is not a rate: use \"rate(N minutes)\", \"rate(N hours)\" or \"rate(N days)\" with N a whole number from 1"
        )
    };
    let mut parts = rate.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let n: i64 = n
        .parse()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(bad)?;
    let unit_secs = match unit {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::seconds(n * unit_secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_patterns_fire_in_their_time_zone() {
        let t = Timing::parse("0 9 * * MON-FRI", "Europe/Berlin", Utc::now()).unwrap();
        // Friday 2026-12-04 10:00 Berlin (09:00 UTC) → Monday 09:00 Berlin.
        let next = t.next_after(utc("2026-12-04T09:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-12-07T08:00:00Z"));
        let hourly = Timing::parse("@hourly", "UTC", Utc::now()).unwrap();
        assert_eq!(
            hourly.upcoming(utc("2026-12-01T10:15:00Z"), 2),
            [utc("2026-12-01T11:00:00Z"), utc("2026-12-01T12:00:00Z")]
        );
        let six = Timing::parse("30 0 12 * * *", "UTC", Utc::now()).unwrap();
        assert_eq!(
            six.next_after(utc("2026-12-01T10:00:00Z")),
            Some(utc("2026-12-01T12:00:30Z"))
        );
    }

    #[test]
    fn a_skipped_local_time_fires_once_and_a_repeated_one_once() {
        let ny = "America/New_York";
        // 2026-03-08: 02:00 → 03:00 in New York; 02:30 does not happen.
        let t = Timing::parse("30 2 * * *", ny, Utc::now()).unwrap();
        let days = t.upcoming(utc("2026-03-07T12:00:00Z"), 3);
        let tz: Tz = ny.parse().unwrap();
        let local: Vec<String> = days
            .iter()
            .map(|d| d.with_timezone(&tz).format("%m-%d %H:%M").to_string())
            .collect();
        assert_eq!(local, ["03-08 03:00", "03-09 02:30", "03-10 02:30"]);
        // 2026-11-01: 02:00 → 01:00; 01:30 happens twice, fires once.
        let t = Timing::parse("30 1 * * *", ny, Utc::now()).unwrap();
        let days = t.upcoming(utc("2026-10-31T12:00:00Z"), 3);
        assert_eq!(days.len(), 3);
        let on_the_day = days
            .iter()
            .filter(|d| d.with_timezone(&tz).format("%m-%d").to_string() == "11-01")
            .count();
        assert_eq!(on_the_day, 1, "{days:?}");
    }

    #[test]
    fn rates_count_from_their_anchor() {
        let anchor = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let t = Timing::parse("rate(15 minutes)", "UTC", anchor).unwrap();
        assert_eq!(t.next_after(anchor), Some(utc("2026-12-01T10:15:00Z")));
        assert_eq!(
            t.next_after(utc("2026-12-01T10:44:59Z")),
            Some(utc("2026-12-01T10:45:00Z"))
        );
        assert_eq!(
            t.next_after(utc("2026-12-01T09:00:00Z")),
            Some(anchor),
            "before the anchor"
        );
    }

    #[test]
    fn recent_fire_times_are_the_last_few_missed() {
        let t = Timing::parse("@hourly", "UTC", Utc::now()).unwrap();
        let from = utc("2026-11-01T00:00:00Z");
        let now = utc("2026-12-01T10:30:00Z");
        assert_eq!(
            t.recent(from, now, 3),
            [
                utc("2026-12-01T08:00:00Z"),
                utc("2026-12-01T09:00:00Z"),
                utc("2026-12-01T10:00:00Z")
            ]
        );
        assert_eq!(
            t.recent(utc("2026-12-01T09:00:00Z"), now, 10),
            [utc("2026-12-01T09:00:00Z"), utc("2026-12-01T10:00:00Z")]
        );
        let anchor = utc("2026-12-01T10:00:00Z");
        let r = Timing::parse("rate(10 minutes)", "UTC", anchor).unwrap();
        assert_eq!(
            r.recent(anchor, utc("2026-12-01T10:25:00Z"), 5),
            [
                anchor,
                utc("2026-12-01T10:10:00Z"),
                utc("2026-12-01T10:20:00Z")
            ]
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let now = Utc::now();
        for (spec, tz, says) in [
            ("", "UTC", "cron pattern"),
            ("61 * * * *", "UTC", "not a cron pattern"),
            ("* * * * * *", "UTC", "once a minute"),
            ("0,1 * * * * *", "UTC", "once a minute"),
            ("0 9 * * *", "Mars/Olympus", "IANA"),
            ("rate(0 minutes)", "UTC", "not a rate"),
            ("rate(5 fortnights)", "UTC", "not a rate"),
            ("rate(5)", "UTC", "not a rate"),
            ("0 0 30 2 *", "UTC", "never fires"),
        ] {
            let e = Timing::parse(spec, tz, now).expect_err(spec);
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
