//! The embedded platform: every port on one SQLite file, the in-process
//! orchestrator, and the API router, wired together. `weft dev`, the tests
//! and the benchmark all start Weft through this.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::adapters::http::{EgressPolicy, HttpExecutor};
use crate::adapters::llm::{LlmConfig, LlmExecutor, Spending};
use crate::adapters::sqlite::{MasterKey, SqliteStore};
use crate::app::{App, DefinitionCache};
use crate::domain::WorkspaceId;
use crate::orchestrator::Embedded;
use crate::ports::{StepExecutor, StoreSet};

pub struct Platform {
    pub app: Arc<App>,
    pub orchestrator: Arc<Embedded>,
    pub store: SqliteStore,
    /// Held while the platform is open: one process per database.
    _lock: Option<std::fs::File>,
}

/// Takes the database's lock file (`<db>.lock`), so a second process on the
/// same data refuses to start instead of driving the same runs. The lock
/// goes with the process, however it ends.
fn lock(db: &Path) -> anyhow::Result<Option<std::fs::File>> {
    if db.as_os_str() == ":memory:" {
        return Ok(None);
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another Weft process is using {} (it holds {}); stop it, or give this one another --data-dir",
            db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The development workspace and the key that acts for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevCredentials {
    pub workspace_id: WorkspaceId,
    pub api_key: String,
    /// True when this start created the workspace.
    #[serde(skip)]
    pub created: bool,
}

/// Settings of the embedded platform.
#[derive(Clone, Debug, Default)]
pub struct PlatformConfig {
    /// Which destinations HTTP steps may reach.
    pub egress: EgressPolicy,
    /// Encrypts workspace secrets at rest; without it secrets are unavailable.
    pub master_key: Option<MasterKey>,
    /// LLM providers for `llm` steps.
    pub llm: LlmConfig,
    /// How commits reach the disk (`Full`: every acknowledged write
    /// survives a power loss).
    pub durability: crate::adapters::sqlite::Durability,
    /// Request rates per workspace and per key (`WEFT_RATE_LIMITS`).
    pub rate_limits: crate::domain::RateLimits,
}

impl Platform {
    /// Opens the database at `db` (`:memory:` for a throwaway one) with the
    /// default settings.
    pub async fn open(db: &Path) -> anyhow::Result<Self> {
        Self::open_with(db, PlatformConfig::default()).await
    }

    /// Opens the database at `db` and resumes every unfinished run found there.
    pub async fn open_with(db: &Path, config: PlatformConfig) -> anyhow::Result<Self> {
        let lock = lock(db)?;
        let mut store = SqliteStore::open_with(db, config.durability)?;
        if let Some(k) = &config.master_key {
            store = store.with_master_key(k.clone());
        }
        let shared = Arc::new(store.clone());
        let stores = StoreSet::from_one(shared.clone());
        let definitions = Arc::new(DefinitionCache::default());
        let orchestrator = Arc::new(Embedded::new(
            shared.clone(),
            shared.clone(),
            shared.clone(),
            definitions.clone(),
            executors(&config, &stores)?,
        ));
        let app = Arc::new(
            App::new(stores, orchestrator.clone(), definitions)
                .with_egress(config.egress.clone())
                .with_rates(crate::app::Rates {
                    // One process serves the API: its memory is the one
                    // place requests are counted.
                    store: Arc::new(crate::adapters::rates::MemoryRates::default()),
                    limits: config.rate_limits,
                }),
        );
        tick_schedules(Arc::downgrade(&app));
        process_hook_receipts(Arc::downgrade(&app), store.clone());
        deliver_webhooks(Arc::downgrade(&app), store.clone());
        let resumed = if db == Path::new(":memory:") {
            orchestrator.resume_all(shared.as_ref()).await
        } else {
            orchestrator.recover(shared.as_ref(), db).await
        }
        .context("resuming unfinished runs")?;
        if resumed > 0 {
            tracing::info!(runs = resumed, "resumed unfinished runs");
        }
        Ok(Self {
            app,
            orchestrator,
            store,
            _lock: lock,
        })
    }

    pub fn router(&self) -> axum::Router {
        crate::api::router(self.app.clone())
    }

    /// Creates a workspace with an owner key; returns the key.
    pub async fn create_workspace(
        &self,
        name: &str,
        key: Option<String>,
    ) -> anyhow::Result<(WorkspaceId, String)> {
        crate::app::create_workspace(&self.store, &self.store, name, key).await
    }

    /// The development workspace of a data directory, created on first use.
    /// Its key is kept in `<data_dir>/dev-credentials.json` (readable by the
    /// owner only) so later starts can print it again; `key`, if given (from
    /// `WEFT_DEV_API_KEY`), is made a valid key for it.
    pub async fn dev_credentials(
        &self,
        data_dir: &Path,
        key: Option<String>,
    ) -> anyhow::Result<DevCredentials> {
        let file = data_dir.join("dev-credentials.json");
        let mut creds = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<DevCredentials>(&bytes)
                .with_context(|| format!("reading {}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (workspace_id, api_key) =
                    self.create_workspace("Development", key.clone()).await?;
                let creds = DevCredentials {
                    workspace_id,
                    api_key,
                    created: true,
                };
                write_private(&file, &serde_json::to_vec_pretty(&creds)?)?;
                creds
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        match key {
            Some(k) => {
                crate::app::add_owner_key(&self.store, &creds.workspace_id, &k).await?;
                creds.api_key = k;
            }
            None => {
                let hash = crate::app::hash_api_key(&creds.api_key);
                let works = crate::ports::ApiKeyStore::find_api_key(&self.store, &hash)
                    .await?
                    .is_some_and(|k| !k.expired(chrono::Utc::now()));
                if !works {
                    anyhow::bail!(
                        "the development key in {} was revoked or rotated away: start with WEFT_DEV_API_KEY set to a new key (32+ random characters) to make it the owner key",
                        file.display()
                    );
                }
            }
        }
        Ok(creds)
    }
}

/// How often the embedded platform looks for due schedules.
pub const SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// The embedded tick: fires due schedules until the platform is gone.
fn tick_schedules(app: std::sync::Weak<App>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SCHEDULE_TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let Some(app) = app.upgrade() else {
                return;
            };
            let r = app.fire_schedules(chrono::Utc::now()).await;
            if r.started > 0 || r.errors > 0 {
                tracing::info!(
                    due = r.due,
                    started = r.started,
                    errors = r.errors,
                    "schedules fired"
                );
            }
        }
    });
}

/// The embedded webhook sender: makes the deliveries of runs that ended
/// (woken as a run ends), starts sending those that are due (each send a
/// task of its own), and once an hour forgets deliveries past their
/// retention, until the platform is gone.
fn deliver_webhooks(app: std::sync::Weak<App>, store: SqliteStore) {
    tokio::spawn(async move {
        let mut cleaned = std::time::Instant::now();
        loop {
            let Some(app) = app.upgrade() else {
                return;
            };
            let send_ended = app.webhook_send_ended();
            let made = app.notify_ended_runs().await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "making webhook deliveries");
                0
            });
            let started = app
                .deliver_due(chrono::Utc::now())
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "sending webhook deliveries");
                    0
                });
            drop(app);
            if cleaned.elapsed() > std::time::Duration::from_secs(3600) {
                cleaned = std::time::Instant::now();
                let before = chrono::Utc::now()
                    - chrono::Duration::days(crate::app::DELIVERY_RETENTION_DAYS);
                if let Err(e) = crate::ports::WebhookStore::forget_deliveries(&store, before).await
                {
                    tracing::error!(error = %e, "forgetting old webhook deliveries");
                }
                let before =
                    chrono::Utc::now() - chrono::Duration::hours(crate::ports::EVENT_KEEP_HOURS);
                if let Err(e) = crate::ports::EventLog::forget_events(&store, before).await {
                    tracing::error!(error = %e, "forgetting old events");
                }
                let before = chrono::Utc::now()
                    - chrono::Duration::days(crate::domain::AUDIT_RETENTION_DAYS);
                if let Err(e) = crate::ports::AuditStore::forget_audit(&store, before).await {
                    tracing::error!(error = %e, "forgetting old audit entries");
                }
            }
            // Nothing to start: until a run event is saved, a send ends
            // (its place is free for one that waited), or half a second.
            if made == 0 && started == 0 {
                tokio::select! {
                    _ = store.wait_for_endings(std::time::Duration::from_millis(500)) => {}
                    _ = send_ended.notified() => {}
                }
            }
        }
    });
}

/// Most times a kept hook request whose run could not start is tried.
const RECEIPT_TRIES: u32 = 12;
/// Kept hook requests read at a time, of which at most `RECEIPTS_PER_WORKSPACE`
/// of one workspace are handled, `RECEIPTS_AT_ONCE` at a time: one tenant's
/// flood (or slow templates) does not hold up the others'.
const RECEIPTS_READ: usize = 100;
const RECEIPTS_PER_WORKSPACE: usize = 4;
const RECEIPTS_AT_ONCE: usize = 8;

/// The embedded hook inbox's reader: starts the run of each kept request,
/// as soon as one is kept, until the platform is gone. A request whose run
/// could not start (the store failed) is tried again later, waiting twice
/// as long each time (up to an hour).
fn process_hook_receipts(app: std::sync::Weak<App>, store: SqliteStore) {
    tokio::spawn(async move {
        loop {
            let Some(app) = app.upgrade() else {
                return;
            };
            let now = chrono::Utc::now();
            let due = match store.due_receipts(now, RECEIPTS_READ).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "reading kept hook requests");
                    Vec::new()
                }
            };
            let mut taken: HashMap<WorkspaceId, usize> = HashMap::new();
            let fair: Vec<_> = due
                .into_iter()
                .filter(|(r, _)| {
                    let n = taken.entry(r.workspace_id.clone()).or_default();
                    *n += 1;
                    *n <= RECEIPTS_PER_WORKSPACE
                })
                .collect();
            let busy = !fair.is_empty();
            let mut handling = tokio::task::JoinSet::new();
            for (r, tries) in fair {
                while handling.len() >= RECEIPTS_AT_ONCE {
                    handling.join_next().await;
                }
                let (app, store) = (app.clone(), store.clone());
                handling.spawn(async move { handle_receipt(&app, &store, r, tries, now).await });
            }
            while handling.join_next().await.is_some() {}
            drop(app);
            if !busy {
                store
                    .wait_for_receipts(std::time::Duration::from_secs(1))
                    .await;
            }
        }
    });
}

async fn handle_receipt(
    app: &App,
    store: &SqliteStore,
    r: crate::domain::Receipt,
    tries: u32,
    now: chrono::DateTime<chrono::Utc>,
) {
    let ws = r.workspace_id.clone();
    let done = match app.process_receipt(&r).await {
        Ok(crate::app::Processed::Started { run_id, replayed }) => {
            tracing::info!(workspace_id = %ws, hook_id = %r.hook_id, receipt_id = %r.id, run_id = %run_id, replayed, "a hook request started its run");
            true
        }
        Ok(crate::app::Processed::Dropped(why)) => {
            tracing::warn!(workspace_id = %ws, hook_id = %r.hook_id, receipt_id = %r.id, reason = %why, "a hook request started no run");
            true
        }
        Err(e) if tries + 1 >= RECEIPT_TRIES => {
            tracing::error!(workspace_id = %ws, hook_id = %r.hook_id, receipt_id = %r.id, error = %e, "a hook request started no run after {RECEIPT_TRIES} tries; it is dropped");
            true
        }
        Err(e) => {
            tracing::warn!(workspace_id = %ws, hook_id = %r.hook_id, receipt_id = %r.id, error = %e, "a hook request's run could not start; it is tried again");
            let wait = chrono::Duration::seconds((1i64 << tries.min(12)).min(3600));
            if let Err(e) = store.receipt_retry(&r.id, now + wait).await {
                tracing::error!(error = %e, "keeping a hook request for later");
            }
            false
        }
    };
    if done && let Err(e) = store.receipt_done(&r.id).await {
        tracing::error!(error = %e, "removing a handled hook request");
    }
}

fn executors(
    config: &PlatformConfig,
    stores: &StoreSet,
) -> anyhow::Result<HashMap<String, Arc<dyn StepExecutor>>> {
    let secrets = stores.secrets.clone();
    let spending = Spending::from_stores(stores);
    let mut map: HashMap<String, Arc<dyn StepExecutor>> = HashMap::new();
    map.insert(
        "http".into(),
        Arc::new(
            HttpExecutor::new(config.egress.clone(), secrets.clone())?
                .with_audit(stores.audit.clone()),
        ),
    );
    map.insert(
        "llm".into(),
        Arc::new(LlmExecutor::new(secrets, config.llm.clone(), spending)?),
    );
    Ok(map)
}

/// The master key for secrets at rest: `WEFT_MASTER_KEY` (base64 of 32
/// bytes) if given, otherwise `<data_dir>/master.key`, created on first use
/// and readable by the owner only. Losing it loses every stored secret.
pub fn load_master_key(data_dir: &Path, from_env: Option<&str>) -> anyhow::Result<MasterKey> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let decode = |text: &str, what: &str| -> anyhow::Result<MasterKey> {
        let bytes = STANDARD
            .decode(text.trim())
            .with_context(|| format!("{what} is not base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{what} must be 32 bytes (base64 of 32 random bytes)"))?;
        Ok(MasterKey::from_bytes(key))
    };
    if let Some(text) = from_env.filter(|t| !t.trim().is_empty()) {
        return decode(text, "WEFT_MASTER_KEY");
    }
    let file = data_dir.join("master.key");
    match std::fs::read_to_string(&file) {
        Ok(text) => decode(&text, &file.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private(&file, STANDARD.encode(key.bytes()).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
