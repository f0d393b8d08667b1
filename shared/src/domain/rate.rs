//! Request rates: how many requests a workspace and a key may make, and
//! the generic cell rate algorithm (GCRA) that decides each request from
//! one stored time per limiter (the theoretical arrival time, TAT).

use serde::{Deserialize, Serialize};

/// A sustained rate with a burst: `burst` requests at once, then
/// `per_second` a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// The rates a deployment gives each workspace and each of its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub workspace: Rate,
    pub key: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            workspace: Rate {
                per_second: 200,
                burst: 400,
            },
            key: Rate {
                per_second: 100,
                burst: 200,
            },
        }
    }
}

impl RateLimits {
    /// A million requests a second: no limit a client meets (tests and
    /// benchmarks that measure other things).
    pub fn generous() -> Self {
        let r = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        RateLimits {
            workspace: r,
            key: r,
        }
    }

    /// `workspace=200/400,key=100/200` (per second / burst).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = RateLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (who, rate) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `workspace=N/B` or `key=N/B`"))?;
            let rate = Rate::parse(rate).ok_or_else(|| {
                format!("`{rate}` is not a rate: N/B, N requests a second with a burst of B")
            })?;
            match who.trim() {
                "workspace" => out.workspace = rate,
                "key" => out.key = rate,
                other => return Err(format!("unknown limiter `{other}`; use workspace or key")),
            }
        }
        Ok(out)
    }
}

impl Rate {
    /// `N/B`: N a second, bursts of B (both at least 1, B at least N).
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, b) = s.trim().split_once('/')?;
        let rate = Rate {
            per_second: n.trim().parse().ok()?,
            burst: b.trim().parse().ok()?,
        };
        rate.valid().then_some(rate)
    }

    /// The tighter of two rates, each part.
    pub fn min(self, other: Rate) -> Rate {
        Rate {
            per_second: self.per_second.min(other.per_second),
            burst: self.burst.min(other.burst),
        }
    }

    pub fn valid(&self) -> bool {
        self.per_second >= 1 && self.burst >= self.per_second && self.burst <= 1_000_000
    }

    /// Microseconds between requests at the sustained rate.
    fn interval(&self) -> i64 {
        (1_000_000 / i64::from(self.per_second.max(1))).max(1)
    }

    /// How far ahead of now the TAT may run: a burst's worth.
    fn tolerance(&self) -> i64 {
        self.interval() * i64::from(self.burst.max(1))
    }

    /// The window the burst refills in, in seconds (what
    /// `RateLimit-Policy`'s `w` says).
    pub fn window_secs(&self) -> u64 {
        (self.tolerance() as u64).div_ceil(1_000_000).max(1)
    }
}

/// What one limiter says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Taken: the limiter's new TAT, the requests left now, and the
    /// seconds until the burst is whole again.
    Allowed {
        tat: i64,
        remaining: u32,
        reset_secs: u64,
    },
    /// Refused: try again in this many seconds (at least 1).
    Denied { retry_after_secs: u64 },
}

/// One request against a limiter whose TAT is `tat` (None: never used),
/// at `now` (microseconds since the epoch).
pub fn gcra(tat: Option<i64>, now: i64, rate: Rate) -> Verdict {
    let t = rate.interval();
    let tau = rate.tolerance();
    let new_tat = tat.unwrap_or(now).max(now) + t;
    let ahead = new_tat - now;
    if ahead > tau {
        let wait = ahead - tau;
        return Verdict::Denied {
            retry_after_secs: (wait as u64).div_ceil(1_000_000).max(1),
        };
    }
    Verdict::Allowed {
        tat: new_tat,
        remaining: ((tau - ahead) / t) as u32,
        reset_secs: (ahead as u64).div_ceil(1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let rate = Rate {
            per_second: 10,
            burst: 20,
        };
        let now = 1_000 * SEC;
        let mut tat = None;
        for i in 0..20 {
            match gcra(tat, now, rate) {
                Verdict::Allowed {
                    tat: t, remaining, ..
                } => {
                    assert_eq!(remaining, 19 - i);
                    tat = Some(t);
                }
                v => panic!("request {i}: {v:?}"),
            }
        }
        assert_eq!(
            gcra(tat, now, rate),
            Verdict::Denied {
                retry_after_secs: 1
            }
        );
        // A tenth of a second later, one more.
        let later = now + SEC / 10;
        let Verdict::Allowed {
            tat: t, remaining, ..
        } = gcra(tat, later, rate)
        else {
            panic!("refused after the interval");
        };
        assert_eq!(remaining, 0);
        assert!(matches!(gcra(Some(t), later, rate), Verdict::Denied { .. }));
        // Idle for the window: the whole burst again.
        let idle = later + 2 * SEC;
        assert!(matches!(
            gcra(Some(t), idle, rate),
            Verdict::Allowed { remaining: 19, .. }
        ));
    }

    #[test]
    fn limits_are_read_from_text() {
        let l = RateLimits::parse("workspace=50/100, key=5/10").unwrap();
        assert_eq!(
            l.workspace,
            Rate {
                per_second: 50,
                burst: 100
            }
        );
        assert_eq!(
            l.key,
            Rate {
                per_second: 5,
                burst: 10
            }
        );
        for bad in ["workspace=0/1", "key=10/5", "user=1/1", "key", "key=a/b"] {
            assert!(RateLimits::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Rate {
                per_second: 10,
                burst: 25
            }
            .window_secs(),
            3
        );
    }
}
