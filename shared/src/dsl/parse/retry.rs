//! The `retry` policy every step may set.

use super::*;

pub(super) fn parse_retry(p: &mut Parser, v: Option<&Value>, path: &Path) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let obj = match v {
        None | Some(Value::Null) => return policy,
        Some(Value::Object(o)) => o,
        Some(other) => {
            p.err(path, format!("expected an object such as {{\"max_attempts\": 3, \"initial_interval\": \"1s\"}}, found {}", kind(other)));
            return policy;
        }
    };
    unknown_fields(
        p,
        obj,
        path,
        &[
            "max_attempts",
            "initial_interval",
            "multiplier",
            "backoff_coefficient",
            "max_interval",
            "jitter",
        ],
        "retry policy",
    );
    if let Some(v) = obj.get("max_attempts") {
        match v.as_u64() {
            Some(n) if (1..=MAX_ATTEMPTS as u64).contains(&n) => policy.max_attempts = n as u32,
            _ => p.err(
                &path.key("max_attempts"),
                format!("expected a whole number from 1 to {MAX_ATTEMPTS}"),
            ),
        }
    }
    for (field, slot) in [
        ("initial_interval", &mut policy.initial_interval),
        ("max_interval", &mut policy.max_interval),
    ] {
        if let Some(v) = obj.get(field) {
            match parse_duration(v) {
                Ok(d) => *slot = d,
                Err(e) => p.err(&path.key(field), e),
            }
        }
    }
    let mult = obj
        .get("multiplier")
        .map(|v| ("multiplier", v))
        .or_else(|| {
            obj.get("backoff_coefficient")
                .map(|v| ("backoff_coefficient", v))
        });
    if let Some((field, v)) = mult {
        match v.as_f64() {
            Some(m) if (1.0..=10.0).contains(&m) => policy.multiplier = m,
            _ => p.err(&path.key(field), "expected a number from 1 to 10"),
        }
    }
    if let Some(v) = obj.get("jitter") {
        match v {
            Value::Bool(b) => policy.jitter = if *b { 0.2 } else { 0.0 },
            _ => match v.as_f64() {
                Some(j) if (0.0..=1.0).contains(&j) => policy.jitter = j,
                _ => p.err(
                    &path.key("jitter"),
                    "expected true/false or a fraction from 0 to 1",
                ),
            },
        }
    }
    if policy.max_interval < policy.initial_interval {
        p.err(
            &path.key("max_interval"),
            "max_interval is shorter than initial_interval",
        );
    }
    policy
}
