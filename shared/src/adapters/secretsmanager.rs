//! Workspace secrets in AWS Secrets Manager: one secret per name, under the
//! stack's path and the workspace (`{prefix}{workspace}/{NAME}`), so an IAM
//! policy on the prefix confines the functions to their own stack. Values
//! read for steps are cached briefly in the function.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use chrono::{DateTime, Utc};

use crate::domain::WorkspaceId;
use crate::ports::{SecretMeta, SecretStore, StoreError, StoreResult};

/// How long a value read for a step is reused.
const CACHE_FOR: Duration = Duration::from_secs(30);

pub struct SecretsManagerStore {
    client: Client,
    prefix: String,
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

fn sdk<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => {
            StoreError::Unavailable(format!("Secrets Manager: {code}: {msg}"))
        }
        _ => StoreError::Unavailable(format!("Secrets Manager: {}", DisplayErrorContext(&e))),
    }
}

fn is_not_found<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ResourceNotFoundException")
}

fn time(t: Option<&aws_sdk_secretsmanager::primitives::DateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or_else(Utc::now)
}

impl SecretsManagerStore {
    /// `prefix` is the stack's secret path, e.g. `weft/prod/`.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn id(&self, ws: &WorkspaceId, name: &str) -> String {
        format!("{}{ws}/{name}", self.prefix)
    }

    fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }

    async fn meta(&self, id: &str, name: &str) -> StoreResult<SecretMeta> {
        let d = self
            .client
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .map_err(sdk)?;
        Ok(SecretMeta {
            name: name.to_owned(),
            created_at: time(d.created_date()),
            updated_at: time(d.last_changed_date().or(d.created_date())),
        })
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn put_secret(
        &self,
        ws: &WorkspaceId,
        name: &str,
        value: &str,
    ) -> StoreResult<SecretMeta> {
        let id = self.id(ws, name);
        self.forget(&id);
        let created = self
            .client
            .create_secret()
            .name(&id)
            .secret_string(value)
            .tags(
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key("weft:workspace")
                    .value(ws.as_str())
                    .build(),
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceExistsException") => {
                self.client
                    .put_secret_value()
                    .secret_id(&id)
                    .secret_string(value)
                    .send()
                    .await
                    .map_err(sdk)?;
            }
            Err(e) => return Err(sdk(e)),
        }
        self.meta(&id, name).await
    }

    async fn list_secrets(&self, ws: &WorkspaceId) -> StoreResult<Vec<SecretMeta>> {
        let prefix = format!("{}{ws}/", self.prefix);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(&prefix)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for s in page.map_err(sdk)?.secret_list() {
                // The filter matches prefixes of words; keep exact children.
                let Some(name) = s.name().and_then(|n| n.strip_prefix(&prefix)) else {
                    continue;
                };
                if name.contains('/') || s.deleted_date().is_some() {
                    continue;
                }
                out.push(SecretMeta {
                    name: name.to_owned(),
                    created_at: time(s.created_date()),
                    updated_at: time(s.last_changed_date().or(s.created_date())),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<bool> {
        let id = self.id(ws, name);
        self.forget(&id);
        // A forced delete of a missing secret succeeds: ask first.
        match self.client.describe_secret().secret_id(&id).send().await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(sdk(e)),
        }
        match self
            .client
            .delete_secret()
            .secret_id(&id)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn get_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<Option<String>> {
        let id = self.id(ws, name);
        if let Ok(c) = self.cache.lock()
            && let Some((at, v)) = c.get(&id)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(v.clone());
        }
        let value = match self.client.get_secret_value().secret_id(&id).send().await {
            Ok(out) => out.secret_string().map(str::to_owned),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(sdk(e)),
        };
        // Only values are kept: a secret created a moment ago (perhaps by
        // another function) must be found at once.
        if let (Some(v), Ok(mut c)) = (&value, self.cache.lock()) {
            c.insert(id, (Instant::now(), Some(v.clone())));
        }
        Ok(value)
    }
}
