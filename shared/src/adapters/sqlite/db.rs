//! Connections to one SQLite file: a single writer (SQLite allows one writer
//! at a time; a general pool would only make writers queue on the file lock
//! with busy-waits) and a few readers, which WAL lets run beside it. Work is
//! done on tokio's blocking threads.
//!
//! Writes are group-committed: writes that queue while one is being
//! committed go into the next transaction together, each in a savepoint of
//! its own (a write that fails is rolled back alone), and each caller hears
//! of its write only once the transaction holding it is committed. With
//! `synchronous=FULL` (durable mode) that shares one fsync among them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::ports::{StoreError, StoreResult};

const READERS: usize = 4;

/// Most writes committed in one transaction.
const GROUP: usize = 256;

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` (WAL): a commit survives the process being
    /// killed; an operating-system crash or power loss can lose the last
    /// commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: every acknowledged commit is on the disk (an
    /// fsync per commit, shared by the writes grouped into it).
    Full,
}

/// Tells a write's caller its outcome once the commit is known (None:
/// committed).
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A queued write: runs in the group's transaction (None: the transaction
/// was lost before its turn; it fails without running).
type Job = Box<dyn FnOnce(Option<&Transaction<'_>>) -> Done + Send>;

pub(crate) struct Db {
    writer: Mutex<Connection>,
    /// Empty for an in-memory database, where the writer serves reads.
    readers: Mutex<Vec<Connection>>,
    /// Writes waiting for the writer; `true` while a writer task drains it.
    queue: Mutex<(Vec<Job>, bool)>,
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

fn configure(c: &Connection, durability: Durability) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL with synchronous=NORMAL: a commit survives the process being killed
    // (what `kill -9` tests); only an OS crash or power loss can drop the last
    // commits. FULL syncs every commit.
    c.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    c.pragma_update(None, "synchronous", sync)?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Db {
    pub(crate) fn open(path: &Path, durability: Durability) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let memory = path.as_os_str() == ":memory:";
        let writer = if memory {
            Connection::open_in_memory()?
        } else {
            Connection::open(path)
                .with_context(|| format!("opening database {}", path.display()))?
        };
        configure(&writer, durability).context("configuring the database")?;
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
            queue: Mutex::new((Vec::new(), false)),
        }))
    }

    /// Runs `f` atomically (in a savepoint of a group's immediate
    /// transaction); returns once that transaction is committed, or with
    /// `f`'s error after its changes are rolled back.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |t: Option<&Transaction<'_>>| {
            let out = match t {
                Some(t) => in_savepoint(t, f),
                None => Err(StoreError::Unavailable(
                    "the database rolled the transaction back".into(),
                )),
            };
            let done: Done = Box::new(move |commit: Option<&StoreError>| {
                let out = match (out, commit) {
                    (Ok(_), Some(e)) => Err(StoreError::Unavailable(e.to_string())),
                    (out, _) => out,
                };
                let _ = tx.send(out);
            });
            done
        });
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.0.push(job);
            !std::mem::replace(&mut q.1, true)
        };
        if start {
            // Should the task never run (the runtime shutting down) or stop
            // early, the guard lets the next write start a writer again and
            // fails the writes left queued (their callers hear of it).
            let mut guard = Drainer(Arc::clone(self), true);
            tokio::task::spawn_blocking(move || {
                guard.0.drain();
                guard.released();
            });
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?
    }

    /// The writer task: commits queued writes in groups until none are left.
    fn drain(&self) {
        loop {
            let jobs: Vec<Job> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.0.is_empty() {
                    q.1 = false;
                    return;
                }
                let n = q.0.len().min(GROUP);
                q.0.drain(..n).collect()
            };
            let mut done = Vec::with_capacity(jobs.len());
            let commit = match self.writer.lock() {
                Err(_) => Err(StoreError::Unavailable("database lock poisoned".into())),
                Ok(mut conn) => run_group(&mut conn, jobs, &mut done),
            };
            let error = commit.err();
            for d in done {
                d(error.as_ref());
            }
        }
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

/// Runs a group of writes in one transaction and commits it. A write that
/// panics is rolled back (its caller hears that the writer stopped); the
/// others go on.
fn run_group(conn: &mut Connection, jobs: Vec<Job>, done: &mut Vec<Done>) -> StoreResult<()> {
    let t = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in jobs {
        // SQLite rolls a transaction back by itself on some errors (disk
        // full, I/O): the writes after that must not run outside it.
        if t.is_autocommit() {
            done.push(job(None));
            continue;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&t)))) {
            Ok(d) => done.push(d),
            Err(_) if t.is_autocommit() => {}
            Err(_) => t.execute_batch("ROLLBACK TO write; RELEASE write")?,
        }
    }
    if t.is_autocommit() {
        return Err(StoreError::Unavailable(
            "the database rolled the transaction back".into(),
        ));
    }
    t.commit()?;
    Ok(())
}

/// The writer task's claim on the queue (`true` while it holds it): dropped
/// still holding it (the task never ran, or stopped early), it gives the
/// claim up and fails what is queued.
struct Drainer(Arc<Db>, bool);

impl Drainer {
    /// `drain` gave the claim up itself.
    fn released(&mut self) {
        self.1 = false;
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.1 = false;
        // Dropping a job drops its caller's sender: the caller hears that
        // the writer stopped.
        q.0.clear();
    }
}

/// Runs `f` in a savepoint of `t`: kept if it returns Ok, rolled back if
/// it fails.
fn in_savepoint<T>(
    t: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
) -> StoreResult<T> {
    t.execute_batch("SAVEPOINT write")?;
    let out = f(t);
    let end = if out.is_ok() {
        "RELEASE write"
    } else {
        "ROLLBACK TO write; RELEASE write"
    };
    t.execute_batch(end)?;
    out
}
