//! Inbound webhooks ("hooks"): kept per workflow
//! (`/v1/workflows/{id}/hooks`), called at their public URL
//! (`POST /v1/hooks/{hook_id}`). A request is verified against the hook's
//! scheme and secret, kept (`HookInbox`) and answered 202 at once; a run is
//! started from it after (`process_receipt`), claimed under the hook and
//! the message's dedupe text, so a sender's retry, or a receipt handed on
//! twice, starts one run.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::runs::Claim;
use super::{App, AppError, StartRun, cut};
use crate::domain::limits::{MAX_VALUE_DEPTH, check_json};
use crate::domain::{Hook, HookId, Receipt, RunId, Verification, WorkflowId, WorkspaceId};
use crate::dsl::{Path, ValidationError};
use crate::hooks::{Headers, VerifyError};

/// Most hooks a workflow may have.
pub const MAX_HOOKS_PER_WORKFLOW: usize = 10;
/// Longest `dedupe` template.
const MAX_DEDUPE_TEMPLATE_BYTES: usize = 1024;
/// Largest `input` template, as JSON.
const MAX_INPUT_TEMPLATE_BYTES: usize = 16 * 1024;
/// Largest input a hook's template may make.
const MAX_HOOK_INPUT_BYTES: usize = 1024 * 1024;
/// Longest description.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// What a hook's templates may spend on one request (of a step's), and
/// how long they may take: they run for requests anybody can send.
const HOOK_TEMPLATE_UNITS: usize = 2 * 1024 * 1024;
const HOOK_TEMPLATE_TIME: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest dedupe text kept as it is (a longer one is hashed).
const MAX_DEDUPE_CHARS: usize = 256;
/// What a hook's signing secret's name starts with: on AWS the API
/// function may read only those secrets (it checks requests with them).
pub const HOOK_SECRET_PREFIX: &str = "hook_";

/// A hook as a request describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct HookFields {
    pub verification: Verification,
    pub dedupe: Option<String>,
    pub input: Option<Value>,
    pub description: Option<String>,
}

/// What became of a kept request.
#[derive(Clone, Debug, PartialEq)]
pub enum Processed {
    /// A run started from it (or had, for a repeat: `replayed`).
    Started { run_id: RunId, replayed: bool },
    /// No run can start from it (the hook or workflow is gone, the input
    /// is refused); why, for the log.
    Dropped(String),
}

fn at(field: &str) -> Path {
    Path::root().key(field)
}

/// Checks the hook's templates parse, with the paths of those that do not.
fn template_errors(f: &HookFields) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if let Some(d) = &f.dedupe {
        if d.len() > MAX_DEDUPE_TEMPLATE_BYTES {
            errors.push(ValidationError::new(
                &at("dedupe"),
                format!("longer than {MAX_DEDUPE_TEMPLATE_BYTES} bytes"),
            ));
        } else if let Err(e) = crate::template::template_references(d) {
            errors.push(ValidationError::new(&at("dedupe"), e.to_string()));
        }
    }
    if let Some(i) = &f.input {
        if let Err(why) = check_json(i, MAX_INPUT_TEMPLATE_BYTES, MAX_VALUE_DEPTH) {
            errors.push(ValidationError::new(
                &at("input"),
                format!("the template {why}"),
            ));
        } else {
            let mut refs = Default::default();
            if let Err(e) = crate::template::value_references(i, &mut refs) {
                errors.push(ValidationError::new(&at("input"), e.to_string()));
            }
        }
    }
    if f.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        errors.push(ValidationError::new(
            &at("description"),
            format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    errors
}

impl App {
    pub async fn create_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        f: HookFields,
    ) -> Result<Hook, AppError> {
        // The workflow must exist (another workspace's is not found).
        self.get_workflow(ws, wf, None).await?;
        let mut errors = template_errors(&f);
        let secret = f.verification.secret();
        let secret_at = at("verify").key("secret");
        if !secret.starts_with(HOOK_SECRET_PREFIX) {
            errors.push(ValidationError::new(
                &secret_at,
                format!("a hook's signing secret is named `{HOOK_SECRET_PREFIX}…` (such as `{HOOK_SECRET_PREFIX}github`): only those can be read to check requests"),
            ));
        } else {
            match self.stores.secrets.get_secret(ws, secret).await? {
                None => errors.push(ValidationError::new(
                    &secret_at,
                    format!(
                        "this workspace has no secret named `{secret}`: store the signing secret the sender gave you first (PUT /v1/secrets/{secret})"
                    ),
                )),
                Some(value) => {
                    if crate::hooks::verify::key_bytes(&f.verification, &value).is_err() {
                        errors.push(ValidationError::new(
                            &secret_at,
                            format!(
                                "the secret `{secret}` is not a signing key for this scheme: it must be at least {} bytes (for standard_webhooks, `whsec_` and the base64 of at least that many)",
                                crate::hooks::verify::MIN_KEY_BYTES
                            ),
                        ));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(AppError::InvalidRequest(errors));
        }
        let hook = Hook {
            workspace_id: ws.clone(),
            id: HookId::generate(),
            workflow_id: wf.clone(),
            verification: f.verification,
            dedupe: f.dedupe,
            input: f.input,
            description: f.description,
            created_at: Utc::now(),
        };
        if !self
            .stores
            .hooks
            .create_hook(&hook, MAX_HOOKS_PER_WORKFLOW)
            .await?
        {
            return Err(AppError::BadRequest(format!(
                "workflow `{wf}` has {MAX_HOOKS_PER_WORKFLOW} hooks, the most it may have"
            )));
        }
        Ok(hook)
    }

    pub async fn list_hooks(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
    ) -> Result<Vec<Hook>, AppError> {
        self.get_workflow(ws, wf, None).await?;
        Ok(self.stores.hooks.list_hooks(ws, wf).await?)
    }

    pub async fn get_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &HookId,
    ) -> Result<Hook, AppError> {
        match self.stores.hooks.find_hook(id).await? {
            Some(h) if h.workspace_id == *ws && h.workflow_id == *wf => Ok(h),
            _ => Err(AppError::NotFound(format!(
                "no hook `{id}` on workflow `{wf}`"
            ))),
        }
    }

    pub async fn delete_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &HookId,
    ) -> Result<(), AppError> {
        if self.stores.hooks.delete_hook(ws, wf, id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "no hook `{id}` on workflow `{wf}`"
            )))
        }
    }

    /// A request to a hook's URL: verified, then kept for a run to be
    /// started from it. Returns the receipt's id.
    pub async fn receive_hook(
        &self,
        id: &HookId,
        headers: Headers,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<String, AppError> {
        let not_found = || AppError::NotFound("no such hook".into());
        let hook = self
            .stores
            .hooks
            .find_hook(id)
            .await?
            .ok_or_else(not_found)?;
        let ws = &hook.workspace_id;
        // A hook of an archived workflow takes nothing.
        match self.get_workflow(ws, &hook.workflow_id, None).await {
            Err(AppError::NotFound(_)) => return Err(not_found()),
            other => other.map(drop)?,
        }
        let name = hook.verification.secret();
        // What is wrong with the hook's own set-up is for its owner to
        // know (logged), not for the caller.
        let unverified = || AppError::SignatureInvalid("no signature matches the body".into());
        let Some(secret) = self.stores.secrets.get_secret(ws, name).await? else {
            tracing::warn!(workspace_id = %ws, hook_id = %id, secret = name, "a hook's signing secret is gone; its requests are refused");
            return Err(unverified());
        };
        if let Err(e) = crate::hooks::verify::verify(
            &hook.verification,
            &secret,
            &headers,
            body,
            now.timestamp(),
        ) {
            if e == VerifyError::Secret {
                tracing::warn!(workspace_id = %ws, hook_id = %id, secret = name, "a hook's signing secret is not a key for its scheme; its requests are refused");
                return Err(unverified());
            }
            return Err(AppError::SignatureInvalid(e.to_string()));
        }
        let body = std::str::from_utf8(body)
            .map_err(|_| AppError::BadRequest("the body is not UTF-8 text".into()))?;
        // Read now, while the sender can still be told what is wrong.
        let dedupe = crate::orchestrator::tick::cpu(|| dedupe_of(&hook, &headers, body))
            .map_err(AppError::BadRequest)?;
        let receipt = Receipt {
            id: format!("rcpt_{}", ulid::Ulid::new().to_string().to_lowercase()),
            workspace_id: ws.clone(),
            hook_id: id.clone(),
            received_at: now,
            headers,
            body: body.to_owned(),
            dedupe,
        };
        let kept = serde_json::to_string(&receipt)
            .map_err(|e| AppError::Internal(e.to_string()))?
            .len();
        if kept > crate::hooks::MAX_RECEIPT_BYTES {
            return Err(AppError::BadRequest(format!(
                "the request takes {kept} bytes once kept (its body and headers, escaped as JSON); at most {} can be",
                crate::hooks::MAX_RECEIPT_BYTES
            )));
        }
        self.stores.hook_inbox.enqueue(&receipt).await?;
        tracing::info!(workspace_id = %ws, hook_id = %id, receipt_id = %receipt.id, "a hook request was received");
        Ok(receipt.id)
    }

    /// Starts the run a kept request asks for. An error is worth trying
    /// again (the store failed); what can never start is `Dropped`.
    pub async fn process_receipt(&self, r: &Receipt) -> Result<Processed, AppError> {
        let ws = &r.workspace_id;
        let Some(hook) = self
            .stores
            .hooks
            .find_hook(&r.hook_id)
            .await?
            .filter(|h| h.workspace_id == *ws)
        else {
            return Ok(Processed::Dropped("the hook was deleted".into()));
        };
        let input = match crate::orchestrator::tick::cpu(|| input_of(&hook, r)) {
            Ok(v) => v,
            Err(why) => return Ok(Processed::Dropped(cut(why))),
        };
        let mut h = Sha256::new();
        h.update(b"hook\0");
        h.update(hook.id.as_str().as_bytes());
        h.update([0]);
        h.update(r.dedupe.as_bytes());
        let digest = format!("{:x}", h.finalize());
        let claim = Claim {
            // A space cannot be in a client's Idempotency-Key.
            key: format!("hook {} {digest}", hook.id),
            request_hash: digest,
        };
        match self
            .start_run_claimed(
                ws,
                &hook.workflow_id,
                StartRun::with_input(input),
                Some(claim),
            )
            .await
        {
            Ok((run, replayed)) => Ok(Processed::Started {
                run_id: run.id,
                replayed,
            }),
            Err(AppError::InvalidRequest(errors)) => Ok(Processed::Dropped(cut(format!(
                "the input is refused by the workflow's input_schema: {}",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )))),
            Err(AppError::NotFound(m) | AppError::Conflict(m) | AppError::BadRequest(m)) => {
                Ok(Processed::Dropped(cut(m)))
            }
            Err(e) => Err(e),
        }
    }
}

fn context(
    hook: &Hook,
    headers: &Headers,
    body: &Value,
    received_at: DateTime<Utc>,
) -> crate::template::Context {
    crate::template::context_from_json(&json!({
        "body": body,
        "headers": headers,
        "hook": {"id": hook.id, "received_at": received_at},
    }))
}

/// The text that names a request's message: the hook's `dedupe` (or its
/// scheme's) made of it, or the SHA-256 of the body. A template that makes
/// nothing of the request refuses it.
fn dedupe_of(hook: &Hook, headers: &Headers, body: &str) -> Result<String, String> {
    let value = crate::hooks::body_value(headers, body)?;
    let Some(t) = hook
        .dedupe
        .as_deref()
        .or(hook.verification.default_dedupe())
    else {
        return Ok(format!("sha256:{:x}", Sha256::digest(body.as_bytes())));
    };
    let _budget = crate::template::scope_sized(HOOK_TEMPLATE_UNITS, HOOK_TEMPLATE_TIME);
    let text = crate::template::render_text(t, &context(hook, headers, &value, Utc::now()))
        .map_err(|e| format!("the hook's dedupe template failed on this request: {e}"))?;
    if text.trim().is_empty() {
        return Err(format!(
            "the hook's dedupe template `{t}` made nothing of this request (a header or field it names is missing)"
        ));
    }
    Ok(if text.chars().count() > MAX_DEDUPE_CHARS {
        format!("sha256:{:x}", Sha256::digest(text.as_bytes()))
    } else {
        text
    })
}

/// The run's input a hook makes of a request: its `input` template over
/// it, or the body.
fn input_of(hook: &Hook, r: &Receipt) -> Result<Value, String> {
    let body = crate::hooks::body_value(&r.headers, &r.body)?;
    let Some(t) = &hook.input else {
        return Ok(body);
    };
    let _budget = crate::template::scope_sized(HOOK_TEMPLATE_UNITS, HOOK_TEMPLATE_TIME);
    let v = crate::template::render_value(t, &context(hook, &r.headers, &body, r.received_at))
        .map_err(|e| format!("the input template failed: {e}"))?;
    check_json(&v, MAX_HOOK_INPUT_BYTES, MAX_VALUE_DEPTH)
        .map_err(|why| format!("the input the template made {why}"))?;
    Ok(v)
}
