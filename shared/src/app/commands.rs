//! What the API asks the application to do, as domain values. The HTTP layer
//! (`api::commands`) turns requests into these, collecting every error with
//! its path; the application never reads a request body itself.

use chrono::NaiveDate;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domain::{Usd, WorkflowId};

/// Start a run of a workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct StartRun {
    pub input: Value,
    /// A version of the workflow; the latest when `None`.
    pub version: Option<u32>,
    /// The run's spending cap; the workflow's own when `None`.
    pub budget_usd: Option<Usd>,
    /// What the input takes in memory once parsed (`memory::mem_size`).
    pub input_memory: u64,
    /// Makes a repeated request return the run the first one started.
    pub idempotency: Option<IdempotencyKey>,
}

impl StartRun {
    /// A start with this input and nothing else.
    pub fn with_input(input: Value) -> Self {
        StartRun {
            input_memory: crate::memory::mem_size(&input),
            input,
            version: None,
            budget_usd: None,
            idempotency: None,
        }
    }

    /// What identifies the request under its Idempotency-Key: the same
    /// workflow, input, version and budget hash the same.
    pub fn request_hash(&self, workflow: &WorkflowId) -> String {
        let mut h = Sha256::new();
        h.update(workflow.as_str().as_bytes());
        h.update([0]);
        let what = json!({
            "input": self.input,
            "version": self.version,
            "budget_usd": self.budget_usd,
        });
        h.update(what.to_string().as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// A client's Idempotency-Key: 1-255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(key: &str) -> Result<Self, String> {
        if key.is_empty()
            || key.len() > Self::MAX_LEN
            || !key.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(format!(
                "Idempotency-Key must be 1-{} visible ASCII characters (a UUID is a good choice)",
                Self::MAX_LEN
            ));
        }
        Ok(IdempotencyKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The days a usage report covers, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl UsageRange {
    /// Longest range a report covers.
    pub const MAX_DAYS: i64 = 366;

    pub fn new(from: NaiveDate, to: NaiveDate) -> Result<Self, String> {
        if to < from {
            return Err("`to` is before `from`".into());
        }
        if (to - from).num_days() >= Self::MAX_DAYS {
            return Err(format!("a report covers at most {} days", Self::MAX_DAYS));
        }
        Ok(UsageRange { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("0b7c-41").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn the_same_start_hashes_the_same() {
        let wf = WorkflowId::from_string("wf_a");
        let a = StartRun::with_input(json!({"x": 1}));
        let mut b = a.clone();
        b.idempotency = IdempotencyKey::parse("k").ok();
        assert_eq!(a.request_hash(&wf), b.request_hash(&wf));
        b.version = Some(2);
        assert_ne!(a.request_hash(&wf), b.request_hash(&wf));
        assert_ne!(
            a.request_hash(&wf),
            a.request_hash(&WorkflowId::from_string("wf_b"))
        );
    }

    #[test]
    fn a_range_is_ordered_and_bounded() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert!(UsageRange::new(d("2026-01-01"), d("2026-01-31")).is_ok());
        assert!(UsageRange::new(d("2026-02-01"), d("2026-01-31")).is_err());
        assert!(UsageRange::new(d("2025-01-01"), d("2026-01-31")).is_err());
    }
}
