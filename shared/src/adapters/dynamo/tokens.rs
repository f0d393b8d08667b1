//! Task tokens of runs parked in the state machine's WaitEvent state: one
//! item in the run's partition, replaced by each park and taken (read and
//! deleted in one request) by whoever resumes the run.

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

    /// Takes the parked token, if any: only one taker gets it.
    pub async fn take_task_token(
        &self,
        ws: &WorkspaceId,
        run: &RunId,
    ) -> StoreResult<Option<String>> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(ws, run), SK)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        out.attributes
            .map(|a| get_s(&a, "token").map(str::to_owned))
            .transpose()
    }
}
