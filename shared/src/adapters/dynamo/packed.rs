//! Small runs keep their step records in the run item: `steps`, the
//! records as a deflated JSON array. A pass of such a run is then one
//! conditional UpdateItem of one small item, where items per step would
//! need a transaction (which DynamoDB bills twice) rewriting each changed
//! step. A run whose records outgrow the bounds below is unpacked once —
//! its records become `STEP#key` items in the transaction that removes
//! `steps` — and stays so. A run item without `steps` (also every run
//! written before packing existed) keeps its steps as items.
//!
//! Deflate (`miniz_oxide`, the pure-Rust codec behind `flate2`): step
//! records repeat their field names and timestamps, so ten records of a
//! typical run (3.4 KB of JSON) take about 0.6 KB.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::Item;
use crate::domain::{StepHead, StepRecord};
use crate::ports::{StoreError, StoreResult};

/// The run item's attribute holding its packed step records.
pub(super) const ATTR: &str = "steps";
/// Most records a packed run holds. With `MAX_STEPS_PER_SAVE` changed ones,
/// the transaction that unpacks it stays within DynamoDB's 100 items.
const MAX_RECORDS: usize = 40;
/// Most bytes of their JSON (so a pass of a packed run parses little).
const MAX_JSON_BYTES: usize = 64 * 1024;
/// Most bytes deflated (what every pass of the run writes and is billed).
const MAX_PACKED_BYTES: usize = 8 * 1024;
/// Deflate level: 6 is zlib's default balance of size and time.
const LEVEL: u8 = 6;

/// The records packed, or None when they are past the bounds (the run's
/// steps are then kept as items).
pub(super) fn pack(records: &[&StepRecord]) -> StoreResult<Option<AttributeValue>> {
    if records.len() > MAX_RECORDS {
        return Ok(None);
    }
    // Outputs and map items are most of a record: records past the bound
    // are told so before their JSON is built (40 outputs of 4 MB would
    // make 160 MB of it).
    let mut left = MAX_JSON_BYTES;
    for v in records
        .iter()
        .flat_map(|r| r.output.iter().chain(r.items.iter().flatten()))
    {
        match crate::domain::limits::json_size(v, left, usize::MAX) {
            Ok(n) => left -= n.min(left),
            Err(_) => return Ok(None),
        }
    }
    let json = serde_json::to_vec(records)?;
    if json.len() > MAX_JSON_BYTES {
        return Ok(None);
    }
    let packed = miniz_oxide::deflate::compress_to_vec(&json, LEVEL);
    if packed.len() > MAX_PACKED_BYTES {
        return Ok(None);
    }
    Ok(Some(AttributeValue::B(Blob::new(packed))))
}

fn inflate(item: &Item) -> StoreResult<Option<Vec<u8>>> {
    let Some(v) = item.get(ATTR) else {
        return Ok(None);
    };
    let AttributeValue::B(b) = v else {
        return Err(StoreError::Unavailable(format!(
            "the run item's `{ATTR}` is not binary"
        )));
    };
    // The limit is what `pack` lets through (a bound on what a stored
    // value can make this allocate).
    miniz_oxide::inflate::decompress_to_vec_with_limit(b.as_ref(), MAX_JSON_BYTES + 1)
        .map(Some)
        .map_err(|e| StoreError::Unavailable(format!("the run's packed steps: {e}")))
}

/// The records a run item holds, or None when its steps are items.
pub(super) fn records(item: &Item) -> StoreResult<Option<Vec<StepRecord>>> {
    match inflate(item)? {
        Some(json) => Ok(Some(serde_json::from_slice(&json)?)),
        None => Ok(None),
    }
}

/// `records` without outputs and items (`StepHead`).
pub(super) fn heads(item: &Item) -> StoreResult<Option<Vec<StepRecord>>> {
    match inflate(item)? {
        Some(json) => Ok(Some(
            serde_json::from_slice::<Vec<StepHead>>(&json)?
                .into_iter()
                .map(|h| h.0)
                .collect(),
        )),
        None => Ok(None),
    }
}

/// How a run's steps are stored, as of a revision.
#[derive(Clone)]
pub(super) enum Layout {
    Packed(Arc<BTreeMap<String, StepRecord>>),
    Items,
}

impl Layout {
    pub(super) fn of(item: &Item) -> StoreResult<Self> {
        Ok(match records(item)? {
            Some(recs) => Self::packed(recs),
            None => Self::Items,
        })
    }

    pub(super) fn packed(recs: Vec<StepRecord>) -> Self {
        Self::Packed(Arc::new(
            recs.into_iter().map(|r| (r.key.clone(), r)).collect(),
        ))
    }
}

/// Most runs whose layout a process remembers.
const KEPT_RUNS: usize = 64;

/// The layout of the runs this process last read or wrote, each at the
/// revision it was read or written at: a write of a packed run merges its
/// changed records into those kept instead of reading the run again. A
/// layout kept at revision r is what is stored at r (every write moves the
/// revision on and is conditioned on it), so a stale one only makes the
/// write lose its condition.
#[derive(Clone, Default)]
pub(super) struct Layouts(Arc<Mutex<HashMap<String, (u64, Layout)>>>);

impl Layouts {
    pub(super) fn get(&self, run_pk: &str, revision: u64) -> Option<Layout> {
        let kept = self.0.lock().ok()?;
        kept.get(run_pk)
            .filter(|(r, _)| *r == revision)
            .map(|(_, l)| l.clone())
    }

    pub(super) fn keep(&self, run_pk: &str, revision: u64, layout: Layout) {
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() >= KEPT_RUNS && !kept.contains_key(run_pk) {
                kept.clear();
            }
            kept.insert(run_pk.to_owned(), (revision, layout));
        }
    }

    pub(super) fn forget(&self, run_pk: &str) {
        if let Ok(mut kept) = self.0.lock() {
            kept.remove(run_pk);
        }
    }
}
