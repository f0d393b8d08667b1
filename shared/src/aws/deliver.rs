//! The deliver function: consumes the delivery queue (SQS), trying each
//! webhook delivery it names (`App::deliver_one`: signed, sent, recorded,
//! and handed back to the queue with the wait before its next attempt).
//! The messages of one batch are sent at once, each in a task of its own.
//! A message whose delivery could not be read or recorded (a store failed)
//! is reported failed, so the queue hands it again (then to its
//! dead-letter queue). Each batch prints its attempts and failures as
//! CloudWatch metrics (Embedded Metric Format), what the failure-rate
//! alarm reads.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde_json::json;

use super::Stack;
use crate::app::{App, Delivered};
use crate::domain::DeliveryRef;

impl Stack {
    pub async fn deliver(&self, app: &Arc<App>, ev: SqsEvent) -> SqsBatchResponse {
        let mut tasks = tokio::task::JoinSet::new();
        for m in ev.records {
            let id = m.message_id.clone().unwrap_or_default();
            let r: DeliveryRef = match serde_json::from_str(m.body.as_deref().unwrap_or_default()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "a delivery queue message names no delivery; it is dropped");
                    continue;
                }
            };
            let app = app.clone();
            tasks.spawn(async move {
                let got = app.deliver_one(&r).await;
                if let Err(e) = &got {
                    tracing::warn!(workspace_id = %r.workspace_id, delivery_id = %r.id, error = %e, "a webhook delivery could not be tried; the queue hands it again");
                }
                (id, got)
            });
        }
        let (mut failed, mut tried, mut refused) = (Vec::new(), 0u64, 0u64);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((_, Ok(Delivered::Tried { ok }))) => {
                    tried += 1;
                    refused += u64::from(!ok);
                }
                Ok((_, Ok(Delivered::NotDue))) => {}
                Ok((id, Err(_))) => {
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id;
                    failed.push(f);
                }
                // A task that panicked: its message is received again.
                Err(e) => tracing::error!(error = %e, "a delivery task stopped"),
            }
        }
        if let Some(ns) = &self.settings.metrics_namespace
            && tried > 0
        {
            println!("{}", metrics_line(ns, tried, refused));
        }
        let mut out = SqsBatchResponse::default();
        out.batch_item_failures = failed;
        out
    }
}

/// One Embedded Metric Format line: the batch's attempts and failures.
fn metrics_line(namespace: &str, tried: u64, failed: u64) -> String {
    json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Function"]],
                "Metrics": [
                    {"Name": "DeliveryAttempts", "Unit": "Count"},
                    {"Name": "DeliveryFailures", "Unit": "Count"},
                ],
            }],
        },
        "Function": "deliver",
        "DeliveryAttempts": tried,
        "DeliveryFailures": failed,
    })
    .to_string()
}
