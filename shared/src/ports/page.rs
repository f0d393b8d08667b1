//! Pagination: opaque cursors over a store-specific position.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self {
            limit,
            cursor: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page of `limit` items from rows fetched as `limit + 1` (or more):
    /// the extra row only tells whether another page exists; the cursor is
    /// the position of the last item kept.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, position: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| Cursor::from_position(&position(r)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// A position in a listing. Clients see only the encoded form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn from_position(position: &str) -> Self {
        Self(position.to_owned())
    }

    pub fn position(&self) -> &str {
        &self.0
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}", self.0))
    }

    /// None if the text is not a cursor this server issued.
    pub fn decode(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        Some(Self(text.strip_prefix("v1:")?.to_owned()))
    }
}
