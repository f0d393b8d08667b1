//! Connections to one SQLite file: a single writer (SQLite allows one writer
//! at a time; a general pool would only make writers queue on the file lock
//! with busy-waits) and a few readers, which WAL lets run beside it. Work is
//! done on tokio's blocking threads.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::ports::{StoreError, StoreResult};

const READERS: usize = 4;

pub(crate) struct Db {
    writer: Mutex<Connection>,
    /// Empty for an in-memory database, where the writer serves reads.
    readers: Mutex<Vec<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Unavailable(format!("corrupt stored item: {e}"))
    }
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL with synchronous=NORMAL: a commit survives the process being killed
    // (what `kill -9` tests); only an OS crash or power loss can drop the last
    // commits.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Db {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let memory = path.as_os_str() == ":memory:";
        let writer = if memory {
            Connection::open_in_memory()?
        } else {
            Connection::open(path)
                .with_context(|| format!("opening database {}", path.display()))?
        };
        configure(&writer).context("configuring the database")?;
        super::schema::migrate(&writer).context("creating the database schema")?;
        let mut readers = Vec::new();
        if !memory {
            for _ in 0..READERS {
                let r = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                r.busy_timeout(std::time::Duration::from_secs(5))?;
                readers.push(r);
            }
        }
        Ok(Arc::new(Self {
            writer: Mutex::new(writer),
            readers: Mutex::new(readers),
        }))
    }

    /// Runs `f` in one immediate transaction, committed if it returns Ok.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = db
                .writer
                .lock()
                .map_err(|_| StoreError::Unavailable("database lock poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// Runs `f` on a reader connection.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = db.readers.lock().ok().and_then(|mut r| r.pop());
            match conn {
                Some(conn) => {
                    let out = f(&conn);
                    if let Ok(mut r) = db.readers.lock() {
                        r.push(conn);
                    }
                    out
                }
                None => {
                    let conn = db
                        .writer
                        .lock()
                        .map_err(|_| StoreError::Unavailable("database lock poisoned".into()))?;
                    f(&conn)
                }
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }
}
