//! The queues on AWS (SQS). The hook inbox: a verified request is sent to
//! it whole before the sender is answered; the trigger function consumes
//! it. The delivery queue: which webhook delivery to try, held back until
//! it is due; the deliver function consumes it. In both, a failed message
//! is received again, then goes to the dead-letter queue.

use async_trait::async_trait;

use crate::domain::{DeliveryRef, Receipt};
use crate::ports::{DeliveryQueue, HookInbox, MAX_QUEUE_DELAY, StoreError, StoreResult};

/// Largest message the queue takes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

pub struct SqsHookInbox {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsHookInbox {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

#[async_trait]
impl HookInbox for SqsHookInbox {
    async fn enqueue(&self, r: &Receipt) -> StoreResult<()> {
        let body = serde_json::to_string(r)?;
        // The app keeps no receipt larger (`hooks::MAX_RECEIPT_BYTES`).
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(StoreError::Unavailable(format!(
                "a receipt of {} bytes does not fit a message",
                body.len()
            )));
        }
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "sending to the hook queue: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ))
            })?;
        Ok(())
    }
}

/// An inbox for a deployment without a hook queue: every request is
/// refused (the API says hooks are not set up).
pub struct NoHookQueue;

#[async_trait]
impl HookInbox for NoHookQueue {
    async fn enqueue(&self, _: &Receipt) -> StoreResult<()> {
        Err(StoreError::Unavailable(
            "WEFT_HOOK_QUEUE_URL is not set: this deployment has no hook queue".into(),
        ))
    }
}

pub struct SqsDeliveryQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsDeliveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

#[async_trait]
impl DeliveryQueue for SqsDeliveryQueue {
    async fn enqueue(&self, refs: &[DeliveryRef], after: std::time::Duration) -> StoreResult<()> {
        let delay = after.min(MAX_QUEUE_DELAY).as_secs() as i32;
        // A batch takes at most ten messages.
        for chunk in refs.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                entries.push(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(serde_json::to_string(r)?)
                        .delay_seconds(delay)
                        .build()
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "sending to the delivery queue: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    ))
                })?;
            if let Some(f) = out.failed.first() {
                return Err(StoreError::Unavailable(format!(
                    "the delivery queue refused {} message(s): {}",
                    out.failed.len(),
                    f.message.as_deref().unwrap_or(&f.code)
                )));
            }
        }
        Ok(())
    }
}
