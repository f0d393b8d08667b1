//! The log lines of a run's recent passes, kept in its run item: `logs`, a
//! list of chunks `{r: revision, d: that pass's lines as a deflated JSON
//! array}`, and `logs_bytes`, the chunks' deflated size. A pass that writes
//! the run item alone (one conditional UpdateItem, no transaction) appends
//! its lines there in that same write, so they hold exactly when the run's
//! write holds: no line of a write that lost, no write without its lines,
//! whatever happens to the process after it.
//!
//! When the chunks would pass `MAX_BYTES`, the pass first copies them into
//! log items (`LOG#revision#00000`, the lines at the same positions; a
//! chunk is committed, so copying it again changes nothing) and then, in
//! its conditional write, replaces them with its own. Readers merge the
//! items with the chunks by position. A pass written in a transaction puts
//! its lines in log items within it.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Item, get_i, key, n, s};
use crate::domain::LogEntry;
use crate::ports::{StoreError, StoreResult};

/// The run item's list of chunks.
pub(super) const ATTR: &str = "logs";
/// The run item's count of the chunks' deflated bytes.
pub(super) const BYTES_ATTR: &str = "logs_bytes";
/// Most deflated bytes of chunks a run item holds (every later write of
/// the run is billed by its item's size).
pub(super) const MAX_BYTES: usize = 4 * 1024;
/// Most bytes of one pass's lines as JSON kept as a chunk: what one log
/// item holds, so a chunk copied out is one item.
pub(super) const MAX_JSON_BYTES: usize = 32 * 1024;
/// Deflate level (zlib's default balance of size and time).
const LEVEL: u8 = 6;

/// One pass's log lines, deflated.
pub(super) struct Chunk {
    revision: u64,
    packed: Vec<u8>,
}

impl Chunk {
    /// The lines of the pass that writes `revision`, or None when they are
    /// too many to keep in the run item.
    pub(super) fn of(revision: u64, logs: &[LogEntry]) -> StoreResult<Option<Self>> {
        let json = serde_json::to_vec(logs)?;
        if json.len() > MAX_JSON_BYTES {
            return Ok(None);
        }
        let packed = miniz_oxide::deflate::compress_to_vec(&json, LEVEL);
        if packed.len() > MAX_BYTES {
            return Ok(None);
        }
        Ok(Some(Self { revision, packed }))
    }

    pub(super) fn len(&self) -> usize {
        self.packed.len()
    }

    /// The chunk as an element of the run item's list.
    pub(super) fn value(&self) -> AttributeValue {
        AttributeValue::M(
            [
                ("r".to_owned(), n(self.revision)),
                (
                    "d".to_owned(),
                    AttributeValue::B(Blob::new(self.packed.clone())),
                ),
            ]
            .into(),
        )
    }

    fn json(&self) -> StoreResult<Vec<u8>> {
        miniz_oxide::inflate::decompress_to_vec_with_limit(&self.packed, MAX_JSON_BYTES)
            .map_err(|e| StoreError::Unavailable(format!("a run's kept log lines: {e}")))
    }

    /// The lines, each with its position.
    pub(super) fn lines(&self) -> StoreResult<Vec<(String, LogEntry)>> {
        let lines: Vec<LogEntry> = serde_json::from_slice(&self.json()?)?;
        let sk = item_sk(self.revision, 0);
        Ok(lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| (position(&sk, i), l))
            .collect())
    }

    /// The log item the chunk becomes when copied out of the run item.
    fn item(&self, run_pk: &str) -> StoreResult<Item> {
        let mut item = key(run_pk, item_sk(self.revision, 0));
        let json = String::from_utf8(self.json()?)
            .map_err(|e| StoreError::Unavailable(format!("a run's kept log lines: {e}")))?;
        item.insert("data".into(), s(json));
        Ok(item)
    }
}

/// The sort key of a log item: the revision of the write that made its
/// lines, then its index among that write's items.
pub(super) fn item_sk(revision: u64, n: usize) -> String {
    format!("LOG#{revision:012}#{n:05}")
}

/// A line's position: its item's sort key and its index there.
pub(super) fn position(item_sk: &str, i: usize) -> String {
    format!("{item_sk}#{i:05}")
}

/// The chunks a run item holds (none when it has no `logs`).
pub(super) fn chunks(item: &Item) -> StoreResult<Vec<Chunk>> {
    let Some(v) = item.get(ATTR) else {
        return Ok(Vec::new());
    };
    let bad = || StoreError::Unavailable(format!("the run item's `{ATTR}` is malformed"));
    let AttributeValue::L(list) = v else {
        return Err(bad());
    };
    list.iter()
        .map(|c| {
            let AttributeValue::M(m) = c else {
                return Err(bad());
            };
            let Some(AttributeValue::B(d)) = m.get("d") else {
                return Err(bad());
            };
            Ok(Chunk {
                revision: get_i(m, "r") as u64,
                packed: d.as_ref().to_vec(),
            })
        })
        .collect()
}

/// The log items a run item's chunks become when copied out of it.
pub(super) fn items(run_pk: &str, run_item: &Item) -> StoreResult<Vec<Item>> {
    chunks(run_item)?.iter().map(|c| c.item(run_pk)).collect()
}
