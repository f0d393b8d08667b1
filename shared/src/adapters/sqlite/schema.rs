//! The schema, versioned with `user_version`.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    data        TEXT NOT NULL
) STRICT;

CREATE TABLE api_keys (
    key_hash     TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    data         TEXT NOT NULL
) STRICT;

CREATE TABLE workflows (
    workspace_id   TEXT NOT NULL,
    id             TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    archived_at    TEXT,
    data           TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;

CREATE TABLE workflow_versions (
    workspace_id TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    version      INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, workflow_id, version)
) STRICT;

CREATE TABLE runs (
    workspace_id TEXT NOT NULL,
    id           TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;
CREATE INDEX runs_by_workflow ON runs (workspace_id, workflow_id, id);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('PENDING', 'RUNNING', 'WAITING');

CREATE TABLE steps (
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    key          TEXT NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, run_id, key)
) STRICT;

CREATE TABLE run_logs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    data         TEXT NOT NULL
) STRICT;
CREATE INDEX run_logs_by_run ON run_logs (workspace_id, run_id, seq);

CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
) STRICT;
"#,
    r#"
CREATE TABLE workspace_keys (
    workspace_id TEXT PRIMARY KEY,
    wrapped      BLOB NOT NULL
) STRICT;

CREATE TABLE secrets (
    workspace_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    sealed       BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
) STRICT;
"#,
    r#"
CREATE TABLE workspace_settings (
    workspace_id TEXT PRIMARY KEY,
    data         TEXT NOT NULL
) STRICT;

CREATE TABLE usage_charges (
    workspace_id   TEXT NOT NULL,
    run_id         TEXT NOT NULL,
    step_key       TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    try_index      INTEGER NOT NULL,
    workflow_id    TEXT NOT NULL,
    day            TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    settled        INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_usd       REAL NOT NULL,
    cost_saved_usd REAL NOT NULL,
    cache_hit      INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, run_id, step_key, attempt, try_index)
) STRICT;
CREATE INDEX usage_by_day ON usage_charges (workspace_id, day);

CREATE TABLE result_cache (
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
) STRICT;
"#,
    // Money in whole micro-dollars: sums and settlements are exact.
    r#"
ALTER TABLE usage_charges ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_charges ADD COLUMN saved_micros INTEGER NOT NULL DEFAULT 0;
UPDATE usage_charges SET cost_micros = CAST(round(cost_usd * 1000000) AS INTEGER),
                         saved_micros = CAST(round(cost_saved_usd * 1000000) AS INTEGER);
ALTER TABLE usage_charges DROP COLUMN cost_usd;
ALTER TABLE usage_charges DROP COLUMN cost_saved_usd;
"#,
    // Results of attempts left for their run's next pass.
    r#"
CREATE TABLE step_results (
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    key          TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, run_id, key, attempt)
) STRICT;
"#,
    // Schedules, and the index the tick reads them by.
    r#"
CREATE TABLE schedules (
    workspace_id TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    id           TEXT NOT NULL,
    due_at       TEXT,
    revision     INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, workflow_id, id)
) STRICT;
CREATE INDEX schedules_due ON schedules (due_at) WHERE due_at IS NOT NULL;
"#,
    // Steps waiting for an event, by the event's name.
    r#"
CREATE TABLE waiters (
    workspace_id TEXT NOT NULL,
    event        TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    step_key     TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, event, run_id, step_key)
) STRICT;
"#,
    // The events each workflow's versions listened for (a reader checks
    // the latest version still does).
    r#"
CREATE TABLE workflow_events (
    workspace_id TEXT NOT NULL,
    event        TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    PRIMARY KEY (workspace_id, event, workflow_id)
) STRICT;
INSERT OR IGNORE INTO workflow_events (workspace_id, event, workflow_id)
    SELECT w.workspace_id, j.value, w.id FROM workflows w, json_each(w.data, '$.events') j;
"#,
    // Inbound webhooks, and the verified requests waiting for their runs.
    r#"
CREATE TABLE hooks (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    data         TEXT NOT NULL
) STRICT;
CREATE INDEX hooks_by_workflow ON hooks (workspace_id, workflow_id);
CREATE TABLE hook_receipts (
    id       TEXT PRIMARY KEY,
    due_at   TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    data     TEXT NOT NULL
) STRICT;
CREATE INDEX hook_receipts_due ON hook_receipts (due_at);
"#,
    // Outbound webhooks: endpoints, deliveries (by endpoint, and by when
    // each is due), and the runs that ended whose deliveries are not made.
    r#"
CREATE TABLE webhook_endpoints (
    workspace_id TEXT NOT NULL,
    id           TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;
CREATE TABLE webhook_deliveries (
    workspace_id TEXT NOT NULL,
    id           TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    due_at       TEXT,
    revision     INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (workspace_id, endpoint_id, id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE run_endings (
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, run_id)
) STRICT;
CREATE INDEX run_endings_order ON run_endings (seq);
"#,
    // The outbox holds every run event endpoints may be told of (a step
    // that waits or fails, a budget refusal, the run's end), each once per
    // run and subject (the step's key; "" for the run's end).
    r#"
CREATE TABLE webhook_outbox (
    seq          INTEGER PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    subject      TEXT NOT NULL,
    data         TEXT NOT NULL,
    UNIQUE (workspace_id, run_id, event, subject)
) STRICT;
INSERT INTO webhook_outbox (workspace_id, run_id, event, subject, data)
    SELECT workspace_id, run_id, 'ended', '', '{"event":"ended"}' FROM run_endings ORDER BY seq;
DROP TABLE run_endings;
"#,
    // Sends to rate-limited endpoints, counted per second.
    r#"
CREATE TABLE webhook_rates (
    workspace_id TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    second       INTEGER NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, endpoint_id, second)
) STRICT;
"#,
    // The events sent lately, for steps that look back.
    r#"
CREATE TABLE events_kept (
    seq          INTEGER PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    at           TEXT NOT NULL,
    data         TEXT NOT NULL
) STRICT;
CREATE INDEX events_kept_by_name ON events_kept (workspace_id, name, at);
CREATE INDEX events_kept_by_age ON events_kept (at);
"#,
    // An event is kept once per id.
    r#"
ALTER TABLE events_kept ADD COLUMN event_id TEXT;
CREATE UNIQUE INDEX events_kept_by_id ON events_kept (workspace_id, event_id);
"#,
    // Keys are listed, revoked and rotated per workspace.
    r#"
ALTER TABLE api_keys ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
UPDATE api_keys SET id = json_extract(data, '$.id');
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, id);
"#,
    // Who changed what.
    r#"
CREATE TABLE audit_log (
    workspace_id TEXT NOT NULL,
    id           TEXT NOT NULL,
    at           TEXT NOT NULL,
    action       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;
CREATE INDEX audit_log_by_age ON audit_log (at);
"#,
];

pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let current: usize = c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        c.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_kept_in_dollars_are_moved_to_micro_dollars() {
        let c = Connection::open_in_memory().unwrap();
        let before = 3;
        for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
            c.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))
                .unwrap();
        }
        c.execute(
            "INSERT INTO usage_charges VALUES ('ws', 'run', 's', 1, 0, 'wf', '2026-01-01',
             'openai', 'gpt-4o', 1, 10, 20, 0.1, 0.000003, 0)",
            [],
        )
        .unwrap();
        migrate(&c).unwrap();
        let (cost, saved): (i64, i64) = c
            .query_row(
                "SELECT cost_micros, saved_micros FROM usage_charges",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((cost, saved), (100_000, 3));
    }
}
