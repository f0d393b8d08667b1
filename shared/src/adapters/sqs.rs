//! The hook inbox on AWS: an SQS queue. A verified request is sent to it
//! whole before the sender is answered; the trigger function consumes it
//! (a failed message is received again, then goes to the dead-letter
//! queue).

use async_trait::async_trait;

use crate::domain::Receipt;
use crate::ports::{HookInbox, StoreError, StoreResult};

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
