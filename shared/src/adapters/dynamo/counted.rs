//! Writes of items a workspace may hold only so many of (schedules,
//! hooks, webhook endpoints): the items and the count item that bounds
//! them change in one transaction, so concurrent creates cannot pass the
//! bound and a delete frees its place; and their revision-conditioned
//! rewrites.

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

use super::{DynamoStore, Item, build, cancelled_conditions, n, sdk};
use crate::ports::{StoreError, StoreResult};

impl DynamoStore {
    /// One transaction: None if it held, else which writes' conditions
    /// failed.
    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> StoreResult<Option<Vec<bool>>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(None),
            Err(e) => match cancelled_conditions(&e) {
                Some(failed) if failed.iter().any(|f| *f) => Ok(Some(failed)),
                _ => Err(sdk(e)),
            },
        }
    }

    /// Writes `items`, each only where no item has its key, and counts
    /// them as one at `count` unless it holds `most` already: false then.
    /// Conflict (naming `what`) if one of the items exists.
    pub(super) async fn create_counted(
        &self,
        count: Item,
        most: usize,
        items: Vec<Item>,
        what: &str,
    ) -> StoreResult<bool> {
        self.create_counted_with(count, most, items, Vec::new(), what)
            .await
    }

    /// `create_counted`, with `also` (unconditioned) in the same
    /// transaction.
    pub(super) async fn create_counted_with(
        &self,
        count: Item,
        most: usize,
        items: Vec<Item>,
        also: Vec<TransactWriteItem>,
        what: &str,
    ) -> StoreResult<bool> {
        let mut writes = vec![
            TransactWriteItem::builder()
                .update(build(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(count))
                        .update_expression("ADD n :one")
                        .condition_expression("attribute_not_exists(n) OR n < :most")
                        .expression_attribute_values(":one", n(1))
                        .expression_attribute_values(":most", n(most))
                        .build(),
                )?)
                .build(),
        ];
        for item in items {
            writes.push(
                TransactWriteItem::builder()
                    .put(build(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(item))
                            .condition_expression("attribute_not_exists(pk)")
                            .build(),
                    )?)
                    .build(),
            );
        }
        writes.extend(also);
        match self.transact(writes).await? {
            None => Ok(true),
            Some(failed) if failed.first() == Some(&true) => Ok(false),
            Some(_) => Err(StoreError::Conflict(format!("{what} already exists"))),
        }
    }

    /// Deletes the item at `key` (and those at `also`, whatever they hold)
    /// and takes one from the count at `count`; false if there was no
    /// item at `key` (then nothing changes).
    pub(super) async fn delete_counted(
        &self,
        count: Item,
        key: Item,
        also: Vec<Item>,
    ) -> StoreResult<bool> {
        let delete = |key: Item, only_existing: bool| {
            let mut b = Delete::builder().table_name(&self.table).set_key(Some(key));
            if only_existing {
                b = b.condition_expression("attribute_exists(pk)");
            }
            build(b.build()).map(|d| TransactWriteItem::builder().delete(d).build())
        };
        let mut writes = vec![delete(key, true)?];
        for k in also {
            writes.push(delete(k, false)?);
        }
        writes.push(
            TransactWriteItem::builder()
                .update(build(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(count))
                        .update_expression("ADD n :minus")
                        .expression_attribute_values(":minus", n(-1))
                        .build(),
                )?)
                .build(),
        );
        Ok(self.transact(writes).await?.is_none())
    }

    /// Writes an item at `revision` if it is stored at `revision - 1`
    /// (Conflict naming `what` otherwise, also when it is gone).
    pub(super) async fn put_conditioned(
        &self,
        item: Item,
        revision: u64,
        what: String,
    ) -> StoreResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("revision = :prev")
            .expression_attribute_values(":prev", n(revision.saturating_sub(1)))
            .send()
            .await
            .map_err(sdk)
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "{what} is not at revision {}",
                    revision.saturating_sub(1)
                )),
                e => e,
            })?;
        Ok(())
    }
}
