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
    let stores = contract::Stores::with_secrets(store.clone(), secrets);
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
