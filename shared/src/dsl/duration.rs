//! Durations in definitions: `"30s"`, `"1h 30m"`, `"7days"` (humantime), or a
//! number of seconds.

use std::time::Duration;

use serde_json::Value;

/// The longest delay, timeout or retry interval a definition may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

pub fn parse_duration(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::String(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            format!(
                "`{s}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h 30m\", \"7days\""
            )
        })?,
        Value::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("{n} is not a non-negative number of seconds"))?;
            Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?
        }
        other => {
            return Err(format!(
                "expected a duration such as \"30s\", found {}",
                kind(other)
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(format!(
            "{} is longer than the limit of {}",
            humantime::format_duration(d),
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            parse_duration(&json!("30s")).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_duration(&json!("1h 30m")).unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration(&json!(1.5)).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration(&json!("2years")).is_err());
        assert!(parse_duration(&json!("soon")).is_err());
        assert!(parse_duration(&json!(-1)).is_err());
    }
}
