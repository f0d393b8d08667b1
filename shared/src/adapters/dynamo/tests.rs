//! The store contract on emulated AWS (moto's server): DynamoDB for the
//! tables, Secrets Manager for secrets. `WEFT_AWS_ENDPOINT` names a running
//! server; otherwise one is started from `WEFT_MOTO_SERVER` (the path of
//! `moto_server`, which `infra/local/setup` installs).

use std::sync::Arc;

use super::*;
use crate::adapters::secretsmanager::SecretsManagerStore;
use crate::ports::contract;

struct Moto {
    endpoint: String,
    _child: Option<std::process::Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self._child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn moto() -> Moto {
    if let Ok(endpoint) = std::env::var("WEFT_AWS_ENDPOINT") {
        return Moto {
            endpoint,
            _child: None,
        };
    }
    let server = std::env::var("WEFT_MOTO_SERVER").unwrap_or_else(|_| {
        panic!("set WEFT_AWS_ENDPOINT to a running moto server, or WEFT_MOTO_SERVER to moto_server (infra/local/setup installs it)")
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = std::process::Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {server}: {e}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Moto {
        endpoint,
        _child: Some(child),
    }
}

async fn config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::aws::https_client(crate::aws::Trust::System))
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "static",
        ))
        .load()
        .await
}

#[tokio::test]
async fn passes_the_store_contract_on_emulated_aws() {
    let m = moto();
    let cfg = config(&m.endpoint).await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = format!("weft-test-{}", ulid::Ulid::new().to_string().to_lowercase());
    create_table(&ddb, &table).await.expect("table");
    let s3 = crate::aws::s3_client(&cfg, true, None);
    s3.create_bucket()
        .bucket(&table)
        .send()
        .await
        .expect("bucket");
    let store = Arc::new(DynamoStore::new(ddb, table.clone()).with_payloads(s3, table));

    let secrets = Arc::new(SecretsManagerStore::new(
        aws_sdk_secretsmanager::Client::new(&cfg),
        format!(
            "weft/test-{}/",
            ulid::Ulid::new().to_string().to_lowercase()
        ),
    ));
    let stores = contract::Stores::with_secrets(
        store.clone(),
        secrets,
        std::sync::Arc::new(crate::adapters::sqs::NoHookQueue),
    );
    contract::stalled_runs_are_found(&stores, store.as_ref()).await;
    contract::run_all(stores).await;
}

/// Every AWS call of a function is logged (target `aws_calls`), for the
/// IAM check of infra/local: a change that silenced it would leave that
/// check with nothing to check.
#[tokio::test]
async fn aws_calls_are_logged() {
    use std::io::Write;
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,aws_calls=debug"))
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let m = moto();
    let cfg = config(&m.endpoint).await;
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&cfg)
            .interceptor(crate::aws::CallLog {
                service: "dynamodb",
            })
            .build(),
    );
    ddb.list_tables().send().await.expect("list tables");
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains(r#""call":"dynamodb:ListTables""#),
        "no call logged: {text}"
    );
}

/// A small run keeps its step records in its run item (no step items; a
/// save is one write), read the same through every read path and by a
/// process that did not write them; once it outgrows the bounds its records
/// become items, and a writer that read an older revision loses either way.
#[tokio::test]
async fn small_runs_keep_their_steps_in_the_run_item() {
    use crate::domain::*;
    use crate::ports::{RunStore, RunWrite, StoreError};
    use serde_json::json;

    let (_m, ddb, table) = fresh_table().await;
    let a = DynamoStore::new(ddb.clone(), table.clone());
    // Another process: it has read and written nothing of the run.
    let fresh = || DynamoStore::new(ddb.clone(), table.clone());
    let mut run = running_run(&a).await;
    let ws = run.workspace_id.clone();
    let step = |k: &str, n: u32| {
        let mut s = StepRecord::new(k, "transform");
        s.status = StepStatus::Succeeded;
        s.output = Some(json!({"n": n}));
        s
    };
    let save = |store: DynamoStore, run: RunRecord, steps: Vec<StepRecord>| async move {
        store
            .save_run(&RunWrite {
                run,
                steps,
                logs: vec![LogEntry::new(LogLevel::Info, None, "saved")],
            })
            .await
    };
    let pk = run_pk(&ws, &run.id);
    let step_items = || count_step_items(&ddb, &table, &pk);
    run.revision = 2;
    save(a.clone(), run.clone(), vec![step("a", 1), step("b", 1)])
        .await
        .unwrap();
    assert_eq!(step_items().await, 0, "packed: no step items");
    reads_agree(&fresh(), &run, vec![step("a", 1), step("b", 1)]).await;

    // A process that did not read the run merges its change into the
    // stored records.
    run.revision = 3;
    save(fresh(), run.clone(), vec![step("b", 2), step("c", 1)])
        .await
        .unwrap();
    let packed = vec![step("a", 1), step("b", 2), step("c", 1)];
    reads_agree(&fresh(), &run, packed.clone()).await;
    // `a` kept revision 2 as it wrote it: its write from there loses.
    let mut stale = run.clone();
    stale.revision = 3;
    assert!(matches!(
        save(a.clone(), stale, vec![step("a", 9)]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(step_items().await, 0);

    // Past the bounds: every record becomes an item, and stays one.
    run.revision = 4;
    let many: Vec<StepRecord> = (0..45).map(|i| step(&format!("m{i:02}"), i)).collect();
    save(a.clone(), run.clone(), many.clone()).await.unwrap();
    assert_eq!(step_items().await, 48);
    let mut all = packed.clone();
    all.extend(many);
    all.sort_by(|x, y| x.key.cmp(&y.key));
    reads_agree(&fresh(), &run, all.clone()).await;
    run.revision = 5;
    save(fresh(), run.clone(), vec![step("a", 5)])
        .await
        .unwrap();
    all[0] = step("a", 5);
    reads_agree(&fresh(), &run, all).await;
    assert_eq!(step_items().await, 48);
}

/// A server (or the one named), its DynamoDB client and a new table.
async fn fresh_table() -> (Moto, aws_sdk_dynamodb::Client, String) {
    let m = moto();
    let cfg = config(&m.endpoint).await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = format!("weft-test-{}", ulid::Ulid::new().to_string().to_lowercase());
    create_table(&ddb, &table).await.expect("table");
    (m, ddb, table)
}

/// A running run of a new workspace, created in `store`.
async fn running_run(store: &DynamoStore) -> crate::domain::RunRecord {
    use crate::ports::RunStore;
    let ws = crate::domain::WorkspaceId::generate();
    let mut run = contract::run(&ws, "wf");
    run.status = crate::domain::RunStatus::Running;
    store.create_run(&run, None).await.unwrap();
    run
}

async fn count_step_items(ddb: &aws_sdk_dynamodb::Client, table: &str, pk: &str) -> i32 {
    ddb.query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :s)")
        .expression_attribute_values(":pk", s(pk))
        .expression_attribute_values(":s", s("STEP#"))
        .send()
        .await
        .unwrap()
        .count
}

/// Every read path of `b` finds `want` (in key order) for the run.
async fn reads_agree(
    b: &DynamoStore,
    run: &crate::domain::RunRecord,
    want: Vec<crate::domain::StepRecord>,
) {
    use crate::domain::WorkspaceId;
    use crate::ports::RunStore;
    let ws = &run.workspace_id;
    let keys: Vec<String> = want.iter().map(|s| s.key.clone()).collect();
    assert_eq!(b.get_steps(ws, &run.id).await.unwrap(), want);
    assert_eq!(
        b.load_run(ws, &run.id).await.unwrap(),
        Some((run.clone(), want.clone()))
    );
    let backwards_keys: Vec<String> = keys.iter().rev().cloned().collect();
    let backwards: Vec<_> = want.iter().rev().cloned().collect();
    assert_eq!(
        b.get_steps_by_keys(ws, &run.id, &backwards_keys)
            .await
            .unwrap(),
        backwards
    );
    let heads = b.get_step_heads(ws, &run.id).await.unwrap();
    assert_eq!(heads.len(), want.len());
    assert!(heads.iter().all(|h| h.output.is_none()));
    let head = b.get_step_head(ws, &run.id, &keys[0]).await.unwrap();
    assert_eq!(head.map(|h| h.key), Some(keys[0].clone()));
    assert!(
        b.get_step_head(ws, &run.id, "nope")
            .await
            .unwrap()
            .is_none()
    );
    // Another workspace sees nothing.
    assert!(
        b.get_steps(&WorkspaceId::generate(), &run.id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A save written as one UpdateItem keeps its log lines in the run item,
/// in that same write: the lines of a write that lost never show, and
/// none of a write that held can be lost after it. Kept lines that would
/// outgrow their room are copied into log items first; reads page through
/// both in order, each line once.
#[tokio::test]
async fn log_lines_hold_exactly_when_their_write_holds() {
    use crate::domain::*;
    use crate::ports::{PageRequest, RunStore, RunWrite, StoreError};

    let (_m, ddb, table) = fresh_table().await;
    let a = DynamoStore::new(ddb.clone(), table.clone());
    let mut run = running_run(&a).await;
    let ws = run.workspace_id.clone();
    let pk = run_pk(&ws, &run.id);
    // Lines that deflate poorly, so a few saves fill the room.
    let noisy = |tag: &str| {
        let noise: String = (0..40).map(|_| ulid::Ulid::new().to_string()).collect();
        LogEntry::new(LogLevel::Info, None, format!("{tag} {noise}"))
    };
    let save = |run: RunRecord, logs: Vec<LogEntry>| {
        let a = a.clone();
        async move {
            a.save_run(&RunWrite {
                run,
                steps: Vec::new(),
                logs,
            })
            .await
        }
    };
    let log_items = || async {
        ddb.query()
            .table_name(&table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :s)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":s", s("LOG#"))
            .send()
            .await
            .unwrap()
            .count
    };
    let all_lines = |limit: u32| {
        let a = a.clone();
        let (ws, id) = (ws.clone(), run.id.clone());
        async move {
            let mut lines = Vec::new();
            let mut cursor = None;
            loop {
                let page = a
                    .list_logs(&ws, &id, &PageRequest { limit, cursor })
                    .await
                    .unwrap();
                lines.extend(page.items.into_iter().map(|l| l.message));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => return lines,
                }
            }
        }
    };

    run.revision = 2;
    save(
        run.clone(),
        vec![LogEntry::new(LogLevel::Info, None, "two")],
    )
    .await
    .unwrap();
    assert_eq!(log_items().await, 0, "kept in the run item");
    assert_eq!(all_lines(10).await, ["two"]);
    // A write from the same revision loses, and so do its lines.
    assert!(matches!(
        save(
            run.clone(),
            vec![LogEntry::new(LogLevel::Info, None, "lost")]
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(all_lines(10).await, ["two"]);

    let mut want = vec!["two".to_owned()];
    for rev in 3..=10u64 {
        run.revision = rev;
        let lines = vec![noisy(&format!("r{rev}a")), noisy(&format!("r{rev}b"))];
        want.extend(lines.iter().map(|l| l.message.clone()));
        save(run.clone(), lines).await.unwrap();
    }
    assert!(log_items().await > 0, "kept lines were copied out");
    // Too many lines for the run item: log items, in a transaction.
    run.revision = 11;
    let big: Vec<LogEntry> = (0..30).map(|i| noisy(&format!("big{i}"))).collect();
    want.extend(big.iter().map(|l| l.message.clone()));
    save(run.clone(), big).await.unwrap();
    run.revision = 12;
    save(
        run.clone(),
        vec![LogEntry::new(LogLevel::Info, None, "last")],
    )
    .await
    .unwrap();
    want.push("last".to_owned());
    for limit in [1, 3, 7, 100] {
        assert_eq!(all_lines(limit).await, want, "pages of {limit}");
    }
    // The stale write still loses after all that.
    run.revision = 12;
    assert!(matches!(
        save(
            run.clone(),
            vec![LogEntry::new(LogLevel::Info, None, "lost")]
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(all_lines(100).await, want);
}

/// The steps a finished run's last save would have cancelled read as
/// cancelled even when those writes (made apart, after its transaction)
/// never landed: no later pass follows a finished run to write them.
#[tokio::test]
async fn a_finished_runs_unfinished_steps_read_as_cancelled() {
    use crate::domain::*;
    use crate::ports::{RunStore, RunWrite};

    let (_m, ddb, table) = fresh_table().await;
    let a = DynamoStore::new(ddb.clone(), table.clone());
    let mut run = running_run(&a).await;
    let ws = run.workspace_id.clone();
    // Past the packing bounds: its steps are items.
    let steps: Vec<StepRecord> = (0..45)
        .map(|i| {
            let mut s = StepRecord::new(format!("s{i:02}"), "http");
            s.status = if i == 0 {
                StepStatus::Succeeded
            } else {
                StepStatus::Running
            };
            s
        })
        .collect();
    run.revision = 2;
    let save = |run: RunRecord, steps: Vec<StepRecord>| {
        let a = a.clone();
        async move {
            a.save_run(&RunWrite {
                run,
                steps,
                logs: Vec::new(),
            })
            .await
        }
    };
    save(run.clone(), steps).await.unwrap();
    assert_eq!(
        count_step_items(&ddb, &table, &run_pk(&ws, &run.id)).await,
        45
    );
    let open = a.get_steps(&ws, &run.id).await.unwrap();
    assert_eq!(
        open.iter()
            .filter(|s| s.status == StepStatus::Running)
            .count(),
        44,
        "a running run's steps read as stored"
    );
    // The run ends; its cancellations are lost (none written).
    let ended = chrono::Utc::now();
    run.revision = 3;
    run.status = RunStatus::Failed;
    run.finished_at = Some(ended);
    save(run.clone(), Vec::new()).await.unwrap();
    let fresh = DynamoStore::new(ddb.clone(), table.clone());
    for steps in [
        fresh.get_steps(&ws, &run.id).await.unwrap(),
        fresh.load_run(&ws, &run.id).await.unwrap().unwrap().1,
        fresh.get_step_heads(&ws, &run.id).await.unwrap(),
        fresh
            .get_steps_by_keys(&ws, &run.id, &["s00".into(), "s07".into()])
            .await
            .unwrap(),
    ] {
        assert_eq!(steps[0].status, StepStatus::Succeeded);
        assert!(
            steps[1..]
                .iter()
                .all(|s| s.status == StepStatus::Cancelled && s.finished_at == Some(ended))
        );
    }
    let one = fresh.get_step_head(&ws, &run.id, "s07").await.unwrap();
    assert_eq!(one.map(|s| s.status), Some(StepStatus::Cancelled));
}

#[tokio::test]
async fn request_rates_are_shared_by_every_instance_and_charge_both_limiters_or_neither() {
    use crate::domain::{ApiKeyId, Rate, Verdict, WorkspaceId};
    use crate::ports::RateStore;

    let (_m, ddb, table) = fresh_table().await;
    // Two API instances: one limiter.
    let (a, b) = (
        DynamoStore::new(ddb.clone(), table.clone()),
        DynamoStore::new(ddb.clone(), table.clone()),
    );
    let ws = WorkspaceId::generate();
    let (k1, k2) = (ApiKeyId::generate(), ApiKeyId::generate());
    let ws_rate = Rate {
        per_second: 1,
        burst: 4,
    };
    let key_rate = Rate {
        per_second: 1,
        burst: 2,
    };
    let now = 1_000_000_000_000;
    let allowed = |t: crate::ports::Taken| {
        matches!(
            (t.workspace, t.key),
            (Verdict::Allowed { .. }, Verdict::Allowed { .. })
        )
    };
    let take = |s: &DynamoStore, k: &ApiKeyId| {
        let (s, ws, k) = (s.clone(), ws.clone(), k.clone());
        async move {
            s.take_request(&ws, &k, (ws_rate, key_rate), now)
                .await
                .unwrap()
        }
    };
    assert!(allowed(take(&a, &k1).await));
    assert!(allowed(take(&b, &k1).await));
    // The key is spent; the workspace is not charged for its refusal.
    let t = take(&a, &k1).await;
    assert!(matches!(t.key, Verdict::Denied { .. }), "{t:?}");
    assert!(allowed(take(&b, &k2).await));
    assert!(allowed(take(&a, &k2).await));
    // Now the workspace is spent, whichever key asks.
    let t = take(&b, &k2).await;
    assert!(matches!(t.workspace, Verdict::Denied { .. }), "{t:?}");
    // A deleted key's limiter goes from the item.
    a.forget_rate(&ws, k1.as_str()).await.unwrap();
    let item = ddb
        .get_item()
        .table_name(&table)
        .set_key(Some(super::key(format!("{ws}#RATE"), "RATE")))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(!item.contains_key(&format!("k_{k1}")));
    assert!(item.contains_key(&format!("k_{k2}")) && item.contains_key("w"));
}
