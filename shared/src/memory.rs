//! What JSON takes in memory once parsed, and the budgets that bound it.
//!
//! A parsed `serde_json::Value` can take far more memory than its text: an
//! empty list `[]` is 2 bytes of text and a 32-byte value; `{"a":0}` is 7
//! bytes and a map node of several hundred. Limits that count text alone let
//! a hostile response of a few MiB take hundreds once parsed, so outputs,
//! run state and what a process holds are counted with `mem_size` (and
//! `parse_cost` before parsing, from the text), an estimate that is an
//! upper bound of what serde_json allocates.

use std::sync::{Arc, Mutex};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::StepError;

/// A value's own slot (the size of `Value`).
const SLOT: u64 = 32;
/// Per list element, besides its slot: a `Vec` grows by doubling.
const ELEMENT: u64 = 32;
/// A non-empty map's first node (a B-tree node holds 11 entries).
const MAP: u64 = 640;
/// Per map entry, besides its value: its share of half-full nodes.
const ENTRY: u64 = 120;
/// What the allocator takes per block besides what is asked (a 1-byte
/// string is a block of its own).
const ALLOC: u64 = 16;

/// A heap block of `len` bytes (none for an empty string or list).
fn block(len: u64) -> u64 {
    if len == 0 { 0 } else { len + ALLOC }
}

/// About how many bytes `v` takes in memory (an upper bound).
pub fn mem_size(v: &Value) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total = total.saturating_add(SLOT);
        match v {
            Value::String(s) => total = total.saturating_add(block(s.len() as u64)),
            Value::Array(a) => {
                total = total.saturating_add(block(ELEMENT.saturating_mul(a.len() as u64)));
                stack.extend(a.iter());
            }
            Value::Object(m) => {
                if !m.is_empty() {
                    total = total.saturating_add(MAP);
                }
                for (k, v) in m {
                    total = total.saturating_add(ENTRY + block(k.len() as u64));
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    total
}

/// What parsing `text` as JSON would take in memory (`mem_size` of the
/// result), found without building it; None if it is not valid JSON (or
/// nests past serde_json's limit).
pub fn parse_cost(text: &[u8]) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let cost = Cost.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(cost)
}

/// Counts `mem_size` of the value being read, keeping nothing.
struct Cost;

impl<'de> DeserializeSeed<'de> for Cost {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(CostVisitor)
    }
}

struct CostVisitor;

impl<'de> Visitor<'de> for CostVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u64, E> {
        Ok(SLOT)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u64, E> {
        Ok(SLOT)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u64, E> {
        Ok(SLOT)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u64, E> {
        Ok(SLOT)
    }
    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(SLOT)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
        Ok(SLOT + block(s.len() as u64))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = SLOT;
        let mut any = false;
        while let Some(c) = seq.next_element_seed(Cost)? {
            any = true;
            total = total.saturating_add(ELEMENT).saturating_add(c);
        }
        if any {
            total = total.saturating_add(ALLOC);
        }
        Ok(total)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut total = SLOT;
        let mut any = false;
        while let Some(k) = map.next_key_seed(Cost)? {
            any = true;
            // The key counted as a string: its slot stands for the entry's
            // key field.
            let v = map.next_value_seed(Cost)?;
            total = total
                .saturating_add(ENTRY)
                .saturating_add(k.saturating_sub(SLOT))
                .saturating_add(v);
        }
        if any {
            total = total.saturating_add(MAP);
        }
        Ok(total)
    }
}

/// `max`, or a sixteenth of the machine's memory if that is less (at least
/// 256 MiB): the process's budgets together stay well within a small
/// machine.
pub fn share_of_machine(max: u64) -> u64 {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let total = *TOTAL.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    match total {
        Some(t) => max.min((t / 16).max(256 << 20)),
        None => max,
    }
}

/// A process's budget for memory held by parts of it that many tenants
/// share (results waiting to be recorded, runs being advanced). Charges
/// wait for room; a charge larger than the whole budget is refused.
pub struct Budget {
    room: Arc<Semaphore>,
    /// The budget in KiB (permits are KiB).
    kib: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Arc<Self> {
        let kib = u32::try_from(bytes / 1024)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        Arc::new(Self {
            room: Arc::new(Semaphore::new(kib as usize)),
            kib,
        })
    }

    /// A new, empty account charged against this budget.
    pub fn hold(self: &Arc<Self>) -> Hold {
        Hold(Some(Arc::new(Account {
            budget: self.clone(),
            permits: Mutex::new(Vec::new()),
        })))
    }

    /// Waits for room for `bytes` (at most the whole budget: a larger
    /// amount waits for all of it), held until the permit is dropped.
    pub async fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = kib_of(bytes).min(self.kib);
        self.room.clone().acquire_many_owned(kib).await.ok()
    }

    /// Bytes free now (for tests and logs).
    pub fn available(&self) -> u64 {
        self.room.available_permits() as u64 * 1024
    }
}

fn kib_of(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

struct Account {
    budget: Arc<Budget>,
    permits: Mutex<Vec<OwnedSemaphorePermit>>,
}

/// Memory an attempt's result holds until it is recorded: the executor
/// charges it before it reads or parses (waiting for room), and the room is
/// given back when the last clone is dropped. The default charges nothing
/// (where a process runs one attempt, as a step function does).
#[derive(Clone, Default)]
pub struct Hold(Option<Arc<Account>>);

impl Hold {
    /// Charges `bytes`, waiting for room. Refused if more than the budget.
    pub async fn charge(&self, bytes: u64) -> Result<(), StepError> {
        let Some(acc) = &self.0 else { return Ok(()) };
        let kib = kib_of(bytes);
        if kib > acc.budget.kib {
            return Err(StepError::permanent(
                "output_too_large",
                format!(
                    "the result would take {} MiB in memory; the server holds at most {} MiB of results at once",
                    bytes / (1024 * 1024),
                    acc.budget.kib / 1024
                ),
            ));
        }
        let permit = acc
            .budget
            .room
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| StepError::transient("shutting_down", "the server is stopping"))?;
        if let Ok(mut p) = acc.permits.lock() {
            p.push(permit);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Holds compare equal: they are not part of what a call says.
impl PartialEq for Hold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_estimate_from_text_is_the_estimate_of_the_value() {
        for v in [
            json!(null),
            json!("text"),
            json!([1, [2, [3, {}]], "x"]),
            json!({"a": 0, "b": {"c": [true, false]}, "long key": "v"}),
            json!([[], [], [], {}, {"a": 0}]),
        ] {
            let text = serde_json::to_vec(&v).unwrap();
            assert_eq!(parse_cost(&text), Some(mem_size(&v)), "{v}");
        }
        assert_eq!(parse_cost(b"[1, 2"), None);
        assert_eq!(parse_cost(b"{} x"), None);
    }

    #[test]
    fn dense_json_costs_many_times_its_text() {
        let lists = format!("[{}[]]", "[],".repeat(100_000));
        let maps = format!("[{}{{}}]", "{\"a\":0},".repeat(100_000));
        let text = format!("\"{}\"", "x".repeat(1_000_000));
        let per_byte = |t: &str| parse_cost(t.as_bytes()).unwrap() as f64 / t.len() as f64;
        assert!(per_byte(&lists) > 20.0, "{}", per_byte(&lists));
        assert!(per_byte(&maps) > 100.0, "{}", per_byte(&maps));
        assert!(per_byte(&text) < 1.01, "{}", per_byte(&text));
        // And it is an upper bound of what serde_json really takes: each
        // `[]` is a Value in its list's buffer.
        assert!(parse_cost(lists.as_bytes()).unwrap() >= 100_001 * 32);
    }

    #[tokio::test]
    async fn holds_give_their_room_back_when_dropped() {
        let budget = Budget::new(10 * 1024);
        let a = budget.hold();
        a.charge(6 * 1024).await.unwrap();
        assert_eq!(budget.available(), 4 * 1024);
        let b = budget.hold();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.charge(6 * 1024).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: the charge waits");
        drop(a);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.available(), 4 * 1024);
        assert!(b.charge(11 * 1024).await.is_err(), "past the whole budget");
        drop(b);
        assert_eq!(budget.available(), 10 * 1024);
        // The default hold charges nothing.
        Hold::default().charge(u64::MAX).await.unwrap();
    }
}
