//! The embedded store: every port backed by one SQLite file.

mod db;
mod runs;
mod schema;
mod sealed;
mod secrets;
mod tenants;
mod usage;
mod workflows;

use std::path::Path;
use std::sync::Arc;

use db::Db;

/// Implements every store port on one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    /// Wraps the workspaces' data keys; secrets are unavailable without it.
    master: Option<MasterKey>,
}

pub use sealed::MasterKey;

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`;
    /// `:memory:` gives a private in-memory database.
    pub fn with_master_key(mut self, key: MasterKey) -> Self {
        self.master = Some(key);
        self
    }

    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::open(path)?,
            master: None,
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
