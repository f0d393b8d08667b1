//! Weft on AWS: the Lambda functions' wiring. Typed settings from the
//! environment, the clients and adapters built once per cold start, and the
//! handlers each function's main.rs hands to the Lambda runtime.

mod calls;
mod deliver;
mod driver;
mod error;
mod handlers;
mod settings;
mod sweep;
mod tick;

use std::sync::Arc;

pub use calls::CallLog;
pub use driver::StepFunctionsDriver;
pub use error::FunctionError;
pub use handlers::{AdminRequest, StepPayload};
pub use settings::AwsSettings;
pub use sweep::TickEvent;

use crate::adapters::dynamo::DynamoStore;
use crate::adapters::secretsmanager::SecretsManagerStore;
use crate::app::{App, DefinitionCache};
use crate::orchestrator::tick::Stores;
use crate::ports::StoreSet;

/// Everything a function needs, built once per cold start.
pub struct Stack {
    pub settings: AwsSettings,
    pub store: Arc<DynamoStore>,
    pub secrets: Arc<SecretsManagerStore>,
    pub sfn: aws_sdk_sfn::Client,
    /// Where the API function keeps verified hook requests.
    pub hook_inbox: Arc<dyn crate::ports::HookInbox>,
    /// Where webhook deliveries wait for the deliver function (None: the
    /// tick sends them).
    pub delivery_queue: Option<Arc<dyn crate::ports::DeliveryQueue>>,
    pub definitions: Arc<DefinitionCache>,
    /// Big runs' records kept between this process's passes (plan).
    pub kept_records: crate::orchestrator::stepfunctions::KeptRecords,
}

impl Stack {
    /// Reads the settings from the environment and builds the clients.
    pub async fn from_env() -> anyhow::Result<Self> {
        let settings = AwsSettings::from_env()?;
        let cfg = settings.sdk_config().await;
        let log = |service| calls::CallLog { service };
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&cfg)
                .interceptor(log("dynamodb"))
                .build(),
        );
        let secretsmanager = aws_sdk_secretsmanager::Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::from(&cfg)
                .interceptor(log("secretsmanager"))
                .build(),
        );
        let sfn = aws_sdk_sfn::Client::from_conf(
            aws_sdk_sfn::config::Builder::from(&cfg)
                .interceptor(log("states"))
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&cfg)
                .interceptor(log("sqs"))
                .build(),
        );
        let hook_inbox: Arc<dyn crate::ports::HookInbox> = match &settings.hook_queue_url {
            Some(url) => Arc::new(crate::adapters::sqs::SqsHookInbox::new(
                sqs.clone(),
                url.clone(),
            )),
            None => Arc::new(crate::adapters::sqs::NoHookQueue),
        };
        let delivery_queue = settings.delivery_queue_url.as_ref().map(|url| {
            Arc::new(crate::adapters::sqs::SqsDeliveryQueue::new(
                sqs,
                url.clone(),
            )) as Arc<dyn crate::ports::DeliveryQueue>
        });
        Ok(Self {
            hook_inbox,
            delivery_queue,
            store: Arc::new({
                let store = DynamoStore::new(dynamodb, settings.table.clone());
                match &settings.bucket {
                    Some(b) => store.with_payloads(
                        s3_client(&cfg, settings.endpoint.is_some(), Some(log("s3"))),
                        b.clone(),
                    ),
                    None => store,
                }
            }),
            secrets: Arc::new(SecretsManagerStore::new(
                secretsmanager,
                settings.secret_prefix.clone(),
            )),
            sfn,
            definitions: Arc::new(DefinitionCache::default()),
            kept_records: Default::default(),
            settings,
        })
    }

    /// Every store port: DynamoDB (with S3 for large records), Secrets
    /// Manager, and the hook queue (SQS).
    pub fn store_set(&self) -> StoreSet {
        StoreSet::with_secrets(
            self.store.clone(),
            self.secrets.clone(),
            self.hook_inbox.clone(),
        )
    }

    pub fn stores(&self) -> Stores<'_> {
        Stores {
            runs: self.store.as_ref(),
            workflows: self.store.as_ref(),
            definitions: &self.definitions,
            events: self.store.as_ref(),
        }
    }

    /// The application the API function serves: the same as embedded, on
    /// DynamoDB and Secrets Manager, with Step Functions driving runs.
    pub fn app(&self) -> anyhow::Result<App> {
        let arn = self.settings.state_machine_arn.clone().ok_or_else(|| {
            anyhow::anyhow!("WEFT_STATE_MACHINE_ARN is not set (the API function starts runs)")
        })?;
        let driver = StepFunctionsDriver::new(self.sfn.clone(), arn, self.store.clone());
        let app = App::new(self.store_set(), Arc::new(driver), self.definitions.clone())
            .with_egress(self.settings.egress.clone())
            .with_rates(crate::app::Rates {
                // Every API function instance counts in the one table.
                store: self.store.clone(),
                limits: self.settings.rate_limits,
            });
        Ok(match &self.delivery_queue {
            Some(q) => app.with_delivery_queue(q.clone()),
            None => app,
        })
    }
}

/// The SDK's HTTPS client: rustls on ring (see the workspace Cargo.toml for
/// why not the SDK's default). Every SDK configuration must be given it.
pub fn https_client(trust: Trust) -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, Provider, rustls_provider::CryptoMode};
    let mut builder =
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring));
    if trust == Trust::AmazonRoots {
        let store = tls::TrustStore::empty().with_pem_certificate(AMAZON_TRUST_ROOTS);
        if let Ok(ctx) = tls::TlsContext::builder().with_trust_store(store).build() {
            builder = builder.tls_context(ctx);
        }
    }
    builder.build_https()
}

/// The roots AWS service endpoints chain to (Amazon Root CA 1-4 and
/// Starfield Services Root CA G2, as AWS documents for its endpoints),
/// built in: reading the system's ~150 roots took most of a function's
/// start (about 25 of 31 ms).
const AMAZON_TRUST_ROOTS: &[u8] = include_bytes!("amazon-trust-roots.pem");

/// Which certificate authorities the SDK's HTTPS client trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// AWS's own endpoints: Amazon Trust Services roots only.
    AmazonRoots,
    /// Another HTTPS endpoint (`WEFT_AWS_ENDPOINT`): the system's roots.
    System,
}

#[cfg(test)]
mod trust_tests {
    use base64::Engine as _;

    #[test]
    fn the_built_in_roots_are_five_certificates() {
        let text = std::str::from_utf8(super::AMAZON_TRUST_ROOTS).unwrap();
        let blocks: Vec<&str> = text
            .split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|b| b.split("-----END CERTIFICATE-----").next().unwrap())
            .collect();
        assert_eq!(blocks.len(), 5);
        for b in blocks {
            let der = base64::engine::general_purpose::STANDARD
                .decode(b.split_whitespace().collect::<String>())
                .unwrap();
            // An X.509 certificate is a DER SEQUENCE.
            assert_eq!(der[0], 0x30);
        }
        let ctx = aws_smithy_http_client::tls::TlsContext::builder()
            .with_trust_store(
                aws_smithy_http_client::tls::TrustStore::empty()
                    .with_pem_certificate(super::AMAZON_TRUST_ROOTS),
            )
            .build();
        assert!(ctx.is_ok());
    }
}

/// An S3 client; emulated S3 on 127.0.0.1 needs path-style addressing.
pub fn s3_client(
    cfg: &aws_config::SdkConfig,
    path_style: bool,
    log: Option<calls::CallLog>,
) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(cfg).force_path_style(path_style);
    if let Some(log) = log {
        b = b.interceptor(log);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// JSON log lines on stderr (CloudWatch reads them), filtered by `WEFT_LOG`.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod events_tests;
