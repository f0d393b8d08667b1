//! Bounds on the JSON a run records: every stored value must read back
//! (serde_json refuses nesting past 128 levels, and records wrap values in
//! a few more) and stay within what one step may add to a run's state.

use serde_json::Value;

/// Deepest nesting of lists and objects a recorded value may have.
pub const MAX_VALUE_DEPTH: usize = 64;
/// Most step records one run may have (map iterations multiply them; a
/// nested map is held to this as it starts).
pub const MAX_STEP_RECORDS: usize = 200_000;
/// Largest output one step (or a run) may record: with the run's input it
/// still fits one answer of the API on AWS (6 MB per Lambda response).
pub const MAX_STEP_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Most memory one step's output may take once parsed (`memory::mem_size`):
/// dense JSON takes many times its text (4 MiB of typical API objects take
/// some 50 MiB parsed; of `{"a":0}`, some 400 MiB).
pub const MAX_STEP_OUTPUT_MEMORY: u64 = 128 * 1024 * 1024;
/// Most memory the outputs of one run may take in all (the sum of its
/// steps' `size`, counted as `memory::mem_size`).
pub const MAX_RUN_STATE_BYTES: u64 = 512 * 1024 * 1024;

/// Why a value is out of bounds: too deep, or larger than `max_bytes` as
/// JSON (estimated without building it, stopping as soon as it is over).
pub fn check_json(v: &Value, max_bytes: usize, max_depth: usize) -> Result<(), String> {
    json_size(v, max_bytes, max_depth).map(drop)
}

/// The size of a value as JSON, roughly, if within `max_bytes` and
/// `max_depth` (see `check_json`).
pub fn json_size(v: &Value, max_bytes: usize, max_depth: usize) -> Result<usize, String> {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 1)];
    let mut size = 0usize;
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                if depth > max_depth {
                    return Err(format!("nests more than {max_depth} levels deep"));
                }
                size += 2 + items.len();
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                if depth > max_depth {
                    return Err(format!("nests more than {max_depth} levels deep"));
                }
                size += 2;
                for (k, i) in map {
                    size += k.len() + 4;
                    stack.push((i, depth + 1));
                }
            }
            Value::String(s) => size += s.len() + 2,
            _ => size += 8,
        }
        if size > max_bytes {
            return Err(format!("is larger than {} KiB as JSON", max_bytes / 1024));
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!(1);
        for _ in 0..70 {
            deep = json!([deep]);
        }
        assert!(
            check_json(&deep, 1 << 20, 64)
                .unwrap_err()
                .contains("64 levels")
        );
        assert!(check_json(&json!("x".repeat(2000)), 1024, 64).is_err());
        assert!(check_json(&json!({"a": [1, 2, {"b": "c"}]}), 1024, 64).is_ok());
    }
}
