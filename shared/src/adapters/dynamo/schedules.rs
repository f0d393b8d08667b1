//! Schedules: one partition per workflow's schedules (`{ws}#SCHED#{wf}`,
//! the schedule id as sort key); a schedule with a due time is also in the
//! index `gsi2` (`DUE#{shard}`, due time + ids), which the tick reads for
//! those that are due.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, data, get_s, key, n, s, ts};
use crate::domain::{Schedule, ScheduleId, WorkflowId, WorkspaceId};
use crate::ports::{ScheduleStore, StoreResult};

/// Partitions of the due-schedules index (writes spread, the tick reads
/// each).
const DUE_SHARDS: u32 = 4;

/// The item counting a workspace's schedules.
fn count_key(ws: &WorkspaceId) -> Item {
    key(format!("{ws}#SCHEDULES"), "COUNT")
}

fn pk(ws: &WorkspaceId, wf: &WorkflowId) -> String {
    format!("{ws}#SCHED#{wf}")
}

fn item(sc: &Schedule) -> StoreResult<Item> {
    let mut item = key(pk(&sc.workspace_id, &sc.workflow_id), sc.id.as_str());
    item.insert("data".into(), s(serde_json::to_string(sc)?));
    item.insert("revision".into(), n(sc.revision));
    if let Some(due) = sc.due_at {
        let shard = sc
            .id
            .as_str()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % DUE_SHARDS;
        item.insert("gsi2pk".into(), s(format!("DUE#{shard}")));
        item.insert(
            "gsi2sk".into(),
            s(format!(
                "{}#{}#{}#{}",
                ts(due),
                sc.workspace_id,
                sc.workflow_id,
                sc.id
            )),
        );
    }
    Ok(item)
}

#[async_trait]
impl ScheduleStore for DynamoStore {
    async fn create_schedule(&self, sc: &Schedule, most: usize) -> StoreResult<bool> {
        // The workspace's count and the schedule in one transaction.
        self.create_counted(
            count_key(&sc.workspace_id),
            most,
            vec![item(sc)?],
            &format!("schedule `{}`", sc.id),
        )
        .await
    }

    async fn get_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<Option<Schedule>> {
        self.get(key(pk(ws, wf), id.as_str()))
            .await?
            .map(|i| data(&i))
            .transpose()
    }

    async fn list_schedules(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
    ) -> StoreResult<Vec<Schedule>> {
        self.query_between(pk(ws, wf), "sch_", "sch`")
            .await?
            .iter()
            .map(data)
            .collect()
    }

    async fn save_schedule(&self, sc: &Schedule) -> StoreResult<()> {
        self.put_conditioned(item(sc)?, sc.revision, format!("schedule `{}`", sc.id))
            .await
    }

    async fn delete_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<bool> {
        // The schedule and the workspace's count in one transaction.
        self.delete_counted(count_key(ws), key(pk(ws, wf), id.as_str()), Vec::new())
            .await
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Schedule>> {
        // Keys start with the due time: every key before `{now}$` is due
        // (`#` sorts before `$`).
        let bound = format!("{}$", ts(now));
        let keys: Vec<Item> = self
            .index_below("DUE#", DUE_SHARDS, &bound, limit)
            .await?
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?, get_s(i, "sk")?)))
            .collect::<StoreResult<_>>()?;
        let mut due = Vec::new();
        for i in self.batch_get(keys).await? {
            let sc: Schedule = data(&i)?;
            // The index is read eventually consistently: the item decides.
            if sc.due_at.is_some_and(|d| d <= now) {
                due.push(sc);
            }
        }
        due.sort_by_key(|sc| sc.due_at);
        Ok(due)
    }
}
