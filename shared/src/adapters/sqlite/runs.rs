use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::tenants::insert_or_conflict;
use super::ts;
use crate::domain::{LogEntry, RunId, RunRecord, StepRecord, WorkspaceId};
use crate::ports::{
    ActiveRunIndex, CreateRun, IdempotencyClaim, Page, PageRequest, PendingResult, RunFilter,
    RunStore, RunWrite, StalledRuns, StoreError, StoreResult, Waiter,
};

fn insert_run(tx: &Transaction<'_>, run: &RunRecord) -> StoreResult<()> {
    insert_or_conflict(
        tx.execute(
            "INSERT INTO runs (workspace_id, id, workflow_id, status, revision, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.workspace_id.as_str(),
                run.id.as_str(),
                run.workflow_id.as_str(),
                run.status.as_str(),
                run.revision as i64,
                serde_json::to_string(run)?
            ],
        ),
        "run",
    )
}

fn claim_key(
    tx: &Transaction<'_>,
    ws: &str,
    run_id: &str,
    claim: &IdempotencyClaim,
    now: DateTime<Utc>,
) -> StoreResult<Option<CreateRun>> {
    let existing: Option<(String, String, String)> = tx
        .query_row(
            "SELECT request_hash, run_id, expires_at FROM idempotency_keys WHERE workspace_id = ?1 AND key = ?2",
            params![ws, claim.key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((request_hash, run_id, expires_at)) = existing {
        let live = DateTime::parse_from_rfc3339(&expires_at)
            .map(|e| e.with_timezone(&Utc) > now)
            .unwrap_or(false);
        if live {
            return Ok(Some(CreateRun::Existing {
                run_id: RunId::from_string(run_id),
                request_hash,
            }));
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO idempotency_keys (workspace_id, key, request_hash, run_id, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ws, claim.key, claim.request_hash, run_id, claim.expires_at.to_rfc3339()],
    )?;
    Ok(None)
}

/// Times as text that sorts as time does.
fn read_run(c: &rusqlite::Connection, ws: &str, id: &str) -> StoreResult<Option<RunRecord>> {
    let data: Option<String> = c
        .prepare_cached("SELECT data FROM runs WHERE workspace_id = ?1 AND id = ?2")?
        .query_row(params![ws, id], |r| r.get(0))
        .optional()?;
    Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
}

fn read_run_head(c: &rusqlite::Connection, ws: &str, id: &str) -> StoreResult<Option<RunRecord>> {
    let data: Option<String> = c
        .prepare_cached("SELECT data FROM runs WHERE workspace_id = ?1 AND id = ?2")?
        .query_row(params![ws, id], |r| r.get(0))
        .optional()?;
    Ok(data
        .map(|d| serde_json::from_str::<crate::domain::RunHead>(&d))
        .transpose()?
        .map(|h| h.0))
}

fn read_steps(c: &rusqlite::Connection, ws: &str, id: &str) -> StoreResult<Vec<StepRecord>> {
    let mut stmt =
        c.prepare_cached("SELECT data FROM steps WHERE workspace_id = ?1 AND run_id = ?2")?;
    let rows = stmt
        .query_map(params![ws, id], |r| r.get::<_, String>(0))?
        .map(|d| Ok(serde_json::from_str::<StepRecord>(&d?)?))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(rows)
}

fn read_results(c: &rusqlite::Connection, ws: &str, id: &str) -> StoreResult<Vec<PendingResult>> {
    let mut stmt = c.prepare_cached(
        "SELECT key, attempt, data FROM step_results WHERE workspace_id = ?1 AND run_id = ?2 ORDER BY key, attempt",
    )?;
    let rows = stmt
        .query_map(params![ws, id], |r| {
            Ok(PendingResult::read(
                &r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?.as_bytes(),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn read_step_heads(c: &rusqlite::Connection, ws: &str, id: &str) -> StoreResult<Vec<StepRecord>> {
    let mut stmt =
        c.prepare_cached("SELECT data FROM steps WHERE workspace_id = ?1 AND run_id = ?2")?;
    let rows = stmt
        .query_map(params![ws, id], |r| r.get::<_, String>(0))?
        .map(|d| Ok(serde_json::from_str::<crate::domain::StepHead>(&d?)?.0))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(rows)
}

fn read_steps_at(
    c: &rusqlite::Connection,
    ws: &str,
    id: &str,
    keys: &[String],
) -> StoreResult<Vec<StepRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT data FROM steps WHERE workspace_id = ?1 AND run_id = ?2 AND key = ?3",
    )?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let data: Option<String> = stmt
            .query_row(params![ws, id, k], |r| r.get(0))
            .optional()?;
        if let Some(d) = data {
            out.push(serde_json::from_str(&d)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn put_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        let (ws, w) = (ws.to_string(), w.clone());
        self.db
            .write(move |tx| {
                // Those of the name no longer waiting go first.
                tx.execute(
                    "DELETE FROM waiters WHERE workspace_id = ?1 AND event = ?2 AND expires_at <= ?3",
                    params![ws, w.event, ts(Utc::now())],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO waiters (workspace_id, event, run_id, step_key, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ws, w.event, w.run_id.as_str(), w.step_key, ts(w.expires_at)],
                )?;
                Ok(())
            })
            .await
    }

    async fn waiters(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<Waiter>> {
        let (ws, event) = (ws.to_string(), event.to_owned());
        let now = ts(Utc::now());
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT run_id, step_key, expires_at FROM waiters WHERE workspace_id = ?1 AND event = ?2 AND expires_at > ?3 ORDER BY run_id, step_key LIMIT ?4",
                )?;
                let rows = stmt
                    .query_map(params![ws, event, now, limit as i64], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .map(|row| {
                        let (run, key, exp) = row?;
                        Ok(Waiter {
                            event: event.clone(),
                            run_id: RunId::from_string(run),
                            step_key: key,
                            expires_at: DateTime::parse_from_rfc3339(&exp)
                                .map_err(|e| StoreError::Unavailable(format!("a waiter's time: {e}")))?
                                .with_timezone(&Utc),
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn delete_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        let (ws, w) = (ws.to_string(), w.clone());
        self.db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM waiters WHERE workspace_id = ?1 AND event = ?2 AND run_id = ?3 AND step_key = ?4",
                    params![ws, w.event, w.run_id.as_str(), w.step_key],
                )?;
                Ok(())
            })
            .await
    }

    async fn claim(
        &self,
        ws: &WorkspaceId,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Option<String>> {
        let (ws, claim) = (ws.to_string(), claim.clone());
        let now = Utc::now();
        self.db
            .write(move |tx| {
                Ok(match claim_key(tx, &ws, "", &claim, now)? {
                    Some(CreateRun::Existing { request_hash, .. }) => Some(request_hash),
                    _ => None,
                })
            })
            .await
    }

    async fn create_run(
        &self,
        run: &RunRecord,
        claim: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRun> {
        let (run, claim) = (run.clone(), claim.cloned());
        let now = Utc::now();
        self.db
            .write(move |tx| {
                if let Some(claim) = &claim
                    && let Some(existing) =
                        claim_key(tx, run.workspace_id.as_str(), run.id.as_str(), claim, now)?
                {
                    return Ok(existing);
                }
                insert_run(tx, &run)?;
                Ok(CreateRun::Created)
            })
            .await
    }

    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db.read(move |c| read_run(c, &ws, &id)).await
    }

    async fn get_run_head(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db.read(move |c| read_run_head(c, &ws, &id)).await
    }

    async fn get_steps(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db.read(move |c| read_steps(c, &ws, &id)).await
    }

    async fn get_step_heads(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db.read(move |c| read_step_heads(c, &ws, &id)).await
    }

    async fn get_step_head(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> StoreResult<Option<StepRecord>> {
        let (ws, id, key) = (ws.to_string(), id.to_string(), key.to_owned());
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .prepare_cached(
                        "SELECT data FROM steps WHERE workspace_id = ?1 AND run_id = ?2 AND key = ?3",
                    )?
                    .query_row(params![ws, id, key], |r| r.get(0))
                    .optional()?;
                Ok(data
                    .map(|d| serde_json::from_str::<crate::domain::StepHead>(&d))
                    .transpose()?
                    .map(|h| h.0))
            })
            .await
    }

    async fn get_steps_by_keys(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Vec<StepRecord>> {
        let (ws, id, keys) = (ws.to_string(), id.to_string(), keys.to_vec());
        self.db
            .read(move |c| read_steps_at(c, &ws, &id, &keys))
            .await
    }

    async fn load_run(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .read(move |c| match read_run(c, &ws, &id)? {
                Some(run) => Ok(Some((run, read_steps(c, &ws, &id)?))),
                None => Ok(None),
            })
            .await
    }

    async fn put_result(&self, ws: &WorkspaceId, id: &RunId, r: &PendingResult) -> StoreResult<()> {
        let (ws, id, key, attempt) = (ws.to_string(), id.to_string(), r.key.clone(), r.attempt);
        let data = serde_json::to_string(r)?;
        self.db
            .write(move |tx| {
                tx.prepare_cached("INSERT OR IGNORE INTO step_results (workspace_id, run_id, key, attempt, data) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![ws, id, key, attempt, data])?;
                Ok(())
            })
            .await
    }

    async fn has_result(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        attempt: u32,
    ) -> StoreResult<bool> {
        let (ws, id, key) = (ws.to_string(), id.to_string(), key.to_owned());
        self.db
            .read(move |c| {
                Ok(c.prepare_cached("SELECT 1 FROM step_results WHERE workspace_id = ?1 AND run_id = ?2 AND key = ?3 AND attempt = ?4")?
                    .exists(params![ws, id, key, attempt])?)
            })
            .await
    }

    async fn pending_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Vec<PendingResult>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db.read(move |c| read_results(c, &ws, &id)).await
    }

    async fn clear_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        attempts: &[(String, u32)],
    ) -> StoreResult<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let (ws, id, attempts) = (ws.to_string(), id.to_string(), attempts.to_vec());
        self.db
            .write(move |tx| {
                let mut del = tx.prepare_cached("DELETE FROM step_results WHERE workspace_id = ?1 AND run_id = ?2 AND key = ?3 AND attempt = ?4")?;
                for (key, attempt) in &attempts {
                    del.execute(params![ws, id, key, attempt])?;
                }
                Ok(())
            })
            .await
    }

    async fn load_run_with_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>, Vec<PendingResult>)>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .read(move |c| match read_run(c, &ws, &id)? {
                Some(run) => Ok(Some((
                    run,
                    read_steps(c, &ws, &id)?,
                    read_results(c, &ws, &id)?,
                ))),
                None => Ok(None),
            })
            .await
    }

    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RunRecord>> {
        let ws = ws.to_string();
        // Ids are ULIDs: ordering by id is ordering by creation time.
        let before = page
            .cursor
            .as_ref()
            .map_or_else(|| "~".to_owned(), |c| c.position().to_owned());
        let status = filter.status.map(|s| s.as_str().to_owned());
        let workflow = filter.workflow_id.as_ref().map(|w| w.to_string());
        let limit = page.limit;
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data FROM runs WHERE workspace_id = ?1 AND id < ?2 \
                     AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR workflow_id = ?4) \
                     ORDER BY id DESC LIMIT ?5",
                )?;
                let rows = stmt
                    .query_map(params![ws, before, status, workflow, limit + 1], |r| {
                        r.get::<_, String>(0)
                    })?
                    .map(|d| Ok(serde_json::from_str::<crate::domain::RunHead>(&d?)?.0))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(Page::from_overfetch(rows, limit, |r| r.id.to_string()))
            })
            .await
    }

    async fn save_run(&self, w: &RunWrite) -> StoreResult<()> {
        let run = serde_json::to_string(&w.run)?;
        let steps = w
            .steps
            .iter()
            .map(|s| Ok((s.key.clone(), serde_json::to_string(s)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let logs = w
            .logs
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let (ws, id, status, revision) = (
            w.run.workspace_id.to_string(),
            w.run.id.to_string(),
            w.run.status.as_str(),
            w.run.revision as i64,
        );
        // The outbox of its webhooks: what this save did that endpoints may
        // be told of, each under a subject (the step's key; "" for the
        // run's end) that a repeat does not write twice.
        let events = crate::domain::RunEvent::of_save(&w.run, &w.steps)
            .into_iter()
            .map(|e| {
                let subject = e.step().map(|s| s.key.clone()).unwrap_or_default();
                Ok((e.kind(), subject, serde_json::to_string(&e)?))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let told = !events.is_empty();
        self.db
            .write(move |tx| {
                let n = tx
                    .prepare_cached("UPDATE runs SET status = ?3, revision = ?4, data = ?5 WHERE workspace_id = ?1 AND id = ?2 AND revision = ?6")?
                    .execute(params![ws, id, status, revision, run, revision - 1])?;
                if n != 1 {
                    return Err(StoreError::Conflict(format!("run {id} is not at revision {}", revision - 1)));
                }
                // The outbox, in the same write (only in a workspace with
                // endpoints).
                for (kind, subject, data) in &events {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO webhook_outbox (workspace_id, run_id, event, subject, data) \
                         SELECT ?1, ?2, ?3, ?4, ?5 \
                         WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE workspace_id = ?1)",
                    )?
                    .execute(params![ws, id, kind, subject, data])?;
                }
                let mut put = tx.prepare_cached("INSERT OR REPLACE INTO steps (workspace_id, run_id, key, data) VALUES (?1, ?2, ?3, ?4)")?;
                for (key, data) in &steps {
                    put.execute(params![ws, id, key, data])?;
                }
                let mut log = tx.prepare_cached("INSERT INTO run_logs (workspace_id, run_id, data) VALUES (?1, ?2, ?3)")?;
                for data in &logs {
                    log.execute(params![ws, id, data])?;
                }
                Ok(())
            })
            .await?;
        if told {
            self.endings.notify_one();
        }
        Ok(())
    }

    async fn list_logs(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        page: &PageRequest,
    ) -> StoreResult<Page<LogEntry>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        let after: i64 = page
            .cursor
            .as_ref()
            .and_then(|c| c.position().parse().ok())
            .unwrap_or(0);
        let limit = page.limit;
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, data FROM run_logs WHERE workspace_id = ?1 AND run_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )?;
                let rows = stmt
                    .query_map(params![ws, id, after, limit + 1], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                    .map(|row| {
                        let (seq, d) = row?;
                        Ok((seq, serde_json::from_str::<LogEntry>(&d)?))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                let page = Page::from_overfetch(rows, limit, |(seq, _)| seq.to_string());
                Ok(Page { items: page.items.into_iter().map(|(_, l)| l).collect(), next_cursor: page.next_cursor })
            })
            .await
    }
}

#[async_trait]
impl ActiveRunIndex for SqliteStore {
    async fn active_runs(&self) -> StoreResult<Vec<(WorkspaceId, RunId)>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT workspace_id, id FROM runs WHERE status IN ('PENDING', 'RUNNING', 'WAITING')",
                )?;
                let rows = stmt
                    .query_map([], |r| Ok((WorkspaceId::from_string(r.get::<_, String>(0)?), RunId::from_string(r.get::<_, String>(1)?))))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }
}

/// For the store contract (the embedded orchestrator resumes every active
/// run at start and needs no sweep): the active runs, by the index the
/// statuses have, whose lease ran out.
#[async_trait]
impl StalledRuns for SqliteStore {
    async fn stalled_runs(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> StoreResult<Vec<(WorkspaceId, RunId)>> {
        let rows: Vec<String> = self
            .db
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data FROM runs WHERE status IN ('PENDING', 'RUNNING', 'WAITING')",
                )?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let mut found: Vec<RunRecord> = rows
            .iter()
            .filter_map(|d| serde_json::from_str::<RunRecord>(d).ok())
            .filter(|r| crate::orchestrator::lease::stalled(r, now))
            .collect();
        found.sort_by_key(|r| r.lease.as_ref().map(|l| l.until));
        found.truncate(limit);
        Ok(found.into_iter().map(|r| (r.workspace_id, r.id)).collect())
    }
}
