//! Request rates: each authenticated request is taken from its
//! workspace's and its key's allowance; the answer says what is left
//! (`RateLimit-Policy` and `RateLimit`, IETF httpapi draft) and, past the
//! limit, when to come back.

use std::sync::Arc;

use chrono::Utc;

use super::{App, Principal};
use crate::domain::{Rate, RateLimits, Verdict};
use crate::ports::RateStore;

/// Where rates are kept, and the deployment's limits.
#[derive(Clone)]
pub struct Rates {
    pub store: Arc<dyn RateStore>,
    pub limits: RateLimits,
}

/// What the limiters said about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateAnswer {
    /// `RateLimit-Policy`: each limiter's quota and window.
    pub policy: String,
    /// `RateLimit`: the nearest limiter's remaining requests and reset.
    pub current: String,
    /// Refused: come back in this many seconds (`Retry-After`).
    pub retry_after: Option<u64>,
}

fn policy(name: &str, r: Rate) -> String {
    format!("\"{name}\";q={};w={}", r.burst, r.window_secs())
}

impl App {
    /// Takes the request from its allowances. None where no limits are
    /// set, or (logged) when the limiters cannot be reached: a request is
    /// not refused for that.
    pub async fn take_request(&self, who: &Principal) -> Option<RateAnswer> {
        let rates = self.rates.as_ref()?;
        let ws_rate = rates.limits.workspace;
        let key_rate = who
            .rate_limit
            .map_or(rates.limits.key, |r| r.min(rates.limits.key));
        let now = Utc::now().timestamp_micros();
        let taken = match rates
            .store
            .take_request(&who.workspace_id, &who.lineage, (ws_rate, key_rate), now)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(workspace_id = %who.workspace_id, error = %e, "the rate limiters could not be reached; the request goes on");
                return None;
            }
        };
        let policy = format!(
            "{}, {}",
            policy("workspace", ws_rate),
            policy("key", key_rate)
        );
        let answer = |name: &str, remaining: u32, reset: u64, retry: Option<u64>| RateAnswer {
            policy: policy.clone(),
            current: format!("\"{name}\";r={remaining};t={reset}"),
            retry_after: retry,
        };
        Some(match (taken.workspace, taken.key) {
            (
                Verdict::Allowed {
                    remaining: wr,
                    reset_secs: wt,
                    ..
                },
                Verdict::Allowed {
                    remaining: kr,
                    reset_secs: kt,
                    ..
                },
            ) => {
                if kr <= wr {
                    answer("key", kr, kt, None)
                } else {
                    answer("workspace", wr, wt, None)
                }
            }
            (w, k) => {
                let wait = |v: Verdict| match v {
                    Verdict::Denied { retry_after_secs } => retry_after_secs,
                    Verdict::Allowed { .. } => 0,
                };
                let (ww, kw) = (wait(w), wait(k));
                if kw >= ww {
                    answer("key", 0, kw, Some(kw))
                } else {
                    answer("workspace", 0, ww, Some(ww))
                }
            }
        })
    }
}
