//! Task tokens of runs parked in the state machine's WaitEvent state: one
//! item in the run's partition, replaced by each park. Whoever resumes the
//! run reads it, sends it back, and only then removes it: a send that fails
//! (a throttle, the network) leaves it for the sweeper to send again.

use super::{DynamoStore, get_s, key, n, run_pk, s, sdk};
use crate::domain::{RunId, WorkspaceId};
use crate::ports::StoreResult;

/// Sort key of the parked token ("PARKED" sorts before "RUN": run reads
/// never see it).
const SK: &str = "PARKED";

impl DynamoStore {
    /// Parks the token of a run's waiting state; it expires after `ttl_secs`.
    pub async fn park_task_token(
        &self,
        ws: &WorkspaceId,
        run: &RunId,
        token: &str,
        ttl_secs: i64,
    ) -> StoreResult<()> {
        let mut item = key(run_pk(ws, run), SK);
        item.insert("token".into(), s(token));
        item.insert(
            "ttl".into(),
            n(chrono::Utc::now().timestamp().saturating_add(ttl_secs)),
        );
        self.put(item, false).await
    }

    /// The parked token, if any (read consistently).
    pub async fn task_token(&self, ws: &WorkspaceId, run: &RunId) -> StoreResult<Option<String>> {
        self.get(key(run_pk(ws, run), SK))
            .await?
            .map(|item| get_s(&item, "token").map(str::to_owned))
            .transpose()
    }

    /// Removes the parked token once it was sent back (or is known dead),
    /// unless a newer park replaced it meanwhile.
    pub async fn clear_task_token(
        &self,
        ws: &WorkspaceId,
        run: &RunId,
        token: &str,
    ) -> StoreResult<()> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(ws, run), SK)))
            .condition_expression("#t = :t")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":t", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}
