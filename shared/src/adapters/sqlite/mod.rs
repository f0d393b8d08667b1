//! The embedded store: every port backed by one SQLite file.

mod audit;
mod db;
mod events;
mod hooks;
#[cfg(test)]
mod observed;
mod runs;
mod schedules;
mod schema;
mod sealed;
mod secrets;
mod tenants;
mod usage;
mod webhooks;
mod workflows;

use std::path::Path;
use std::sync::Arc;

use db::Db;
pub use db::Durability;
#[cfg(test)]
pub use observed::Observed;

/// Implements every store port on one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    /// Wraps the workspaces' data keys; secrets are unavailable without it.
    master: Option<MasterKey>,
    /// Told when a hook request is kept (`hooks::wait_for_receipts`).
    receipts: Arc<tokio::sync::Notify>,
    /// Told when a save wrote run events to the outbox
    /// (`wait_for_endings`).
    endings: Arc<tokio::sync::Notify>,
}

pub use sealed::MasterKey;

/// A time as the tables hold it: RFC 3339 to the microsecond, UTC (sorts
/// as text).
fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`;
    /// `:memory:` gives a private in-memory database.
    pub fn with_master_key(mut self, key: MasterKey) -> Self {
        self.master = Some(key);
        self
    }

    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, Durability::Normal)
    }

    /// `open`, with how commits reach the disk.
    pub fn open_with(path: &Path, durability: Durability) -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::open(path, durability)?,
            master: None,
            receipts: Default::default(),
            endings: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::contract;

    #[tokio::test]
    async fn passes_the_store_contract_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("weft.db"))
            .unwrap()
            .with_master_key(MasterKey::generate());
        contract::run_all(contract::Stores::from_one(Arc::new(store))).await;
    }

    #[tokio::test]
    async fn passes_the_store_contract_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("weft.db"), Durability::Full)
            .unwrap()
            .with_master_key(MasterKey::generate());
        contract::run_all(contract::Stores::from_one(Arc::new(store))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_commit_or_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("weft.db"), Durability::Full).unwrap();
        db.write(|t| Ok(t.execute_batch("CREATE TABLE t (n INTEGER)")?))
            .await
            .unwrap();
        // Many writes at once (so they are grouped); the odd ones write and
        // then fail.
        let writes: Vec<_> = (0..200)
            .map(|n: i64| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |t| {
                        t.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                        if n % 2 == 1 {
                            return Err(crate::ports::StoreError::Conflict("odd".into()));
                        }
                        Ok(n)
                    })
                    .await
                })
            })
            .collect();
        let mut ok = 0;
        for (n, w) in writes.into_iter().enumerate() {
            match w.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, n as i64);
                    ok += 1;
                }
                Err(e) => assert!(n % 2 == 1, "{n}: {e}"),
            }
        }
        assert_eq!(ok, 100);
        let (count, odd): (i64, i64) = db
            .read(|c| {
                Ok(
                    c.query_row("SELECT COUNT(*), COALESCE(SUM(n % 2), 0) FROM t", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(
            (count, odd),
            (100, 0),
            "only the writes that succeeded stay"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_callers_hear_is_what_is_stored_when_a_transaction_is_lost() {
        // One write ends the group's transaction (as SQLite does by itself
        // on a full disk or an I/O error); every caller told Ok must find
        // its row, every caller told Err must not.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("weft.db"), Durability::Normal).unwrap();
        db.write(|t| Ok(t.execute_batch("CREATE TABLE t (n INTEGER)")?))
            .await
            .unwrap();
        for round in 0..5 {
            let writes: Vec<_> = (0..60)
                .map(|n: i64| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.write(move |t| {
                            if n == 20 {
                                t.execute_batch("ROLLBACK")?;
                                return Ok(());
                            }
                            t.execute("INSERT INTO t (n) VALUES (?1)", [round * 100 + n])?;
                            Ok(())
                        })
                        .await
                        .is_ok()
                    })
                })
                .collect();
            for (n, w) in writes.into_iter().enumerate() {
                let told_ok = w.await.unwrap();
                let id = round * 100 + n as i64;
                let stored: i64 = db
                    .read(move |c| {
                        Ok(c.query_row("SELECT COUNT(*) FROM t WHERE n = ?1", [id], |r| r.get(0))?)
                    })
                    .await
                    .unwrap();
                assert_eq!(
                    stored == 1,
                    told_ok,
                    "write {id}: told ok {told_ok}, stored {stored}"
                );
            }
        }
    }

    #[tokio::test]
    async fn passes_the_store_contract_in_memory() {
        let store = SqliteStore::open(Path::new(":memory:"))
            .unwrap()
            .with_master_key(MasterKey::generate());
        contract::run_all(contract::Stores::from_one(Arc::new(store))).await;
    }

    #[tokio::test]
    async fn finds_stalled_runs() {
        let store = Arc::new(SqliteStore::open(Path::new(":memory:")).unwrap());
        contract::stalled_runs_are_found(
            &contract::Stores::from_one(store.clone()),
            store.as_ref(),
        )
        .await;
    }

    #[tokio::test]
    async fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.db");
        let ws = crate::domain::Workspace {
            id: crate::domain::WorkspaceId::generate(),
            name: "w".into(),
            created_at: chrono::Utc::now(),
        };
        {
            use crate::ports::WorkspaceStore;
            SqliteStore::open(&path)
                .unwrap()
                .create_workspace(&ws)
                .await
                .unwrap();
        }
        use crate::ports::WorkspaceStore;
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.get_workspace(&ws.id).await.unwrap(), Some(ws));
    }
}
