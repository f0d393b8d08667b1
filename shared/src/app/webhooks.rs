//! Outbound webhooks: a workspace's endpoints (`/v1/endpoints`), the
//! deliveries of run events to them, and the two jobs that make and send
//! those: `notify_ended_runs` (reads the outbox the run's last save wrote,
//! makes one delivery per endpoint that wants the event) and
//! `deliver_due` (sends each delivery that is due, and records how it
//! went). Both run in `weft dev`'s background loop and in the tick.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use super::{App, AppError};
use crate::domain::webhook::FAILING_DAYS_TO_DISABLE;
use crate::domain::{
    Delivery, DeliveryAttempt, DeliveryRef, DeliveryStatus, Endpoint, EndpointId, EventType,
    OutboxEntry, SigningKey, WorkflowId, WorkspaceId,
};
use crate::dsl::{Path, ValidationError};
use crate::ports::{Page, PageRequest, StoreError};
use crate::webhooks::send::{Outcome, Sender};
use crate::webhooks::{payload, schedule, sign};

/// Most endpoints a workspace may have.
pub const MAX_ENDPOINTS_PER_WORKSPACE: usize = 20;
/// Most workflows one endpoint may be limited to.
const MAX_ENDPOINT_WORKFLOWS: usize = 100;
const MAX_URL_BYTES: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 500;
/// How long a rotated-out key goes on signing.
const OLD_KEY_HOURS: i64 = 24;
/// Most ended runs one pass makes deliveries for.
const ENDED_BATCH: usize = 100;
/// Most due deliveries one pass reads (those it cannot send now wait).
pub const DUE_BATCH: usize = 200;
/// Most deliveries being sent at once, in all and of one workspace: a
/// tenant whose endpoints hang holds at most its own share.
const SENDING_AT_ONCE: usize = 32;
const SENDING_PER_WORKSPACE: usize = 8;
/// How long deliveries are kept (then forgotten, succeeded or failed).
pub const DELIVERY_RETENTION_DAYS: i64 = 30;
/// How long a delivery being sent is kept from other senders (longer than
/// a send may take, `send::TIMEOUT`; a sender cut off half way is followed
/// this long after).
const SEND_LEASE_SECS: i64 = 30;
/// How long after it is due a pending delivery is handed to the queue
/// again by the tick (its message is late, or was lost).
const QUEUE_GRACE: Duration = Duration::minutes(2);
/// The highest rate limit an endpoint may have (deliveries per second).
pub const MAX_RATE_LIMIT: u32 = 1000;
/// Most signing keys a process keeps read (all are forgotten past it).
const SIGNING_KEYS_KEPT: usize = 10_000;
/// Most failed deliveries one "replay since" looks at.
pub const MAX_REPLAYED_AT_ONCE: usize = 500;

/// What one message of the delivery queue came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Sent: accepted (`ok`), or failed and scheduled again or given up.
    Tried { ok: bool },
    /// Nothing to send now (done, not yet due, or held by another sender).
    NotDue,
}

/// An endpoint as a request describes it (all optional in a change; `url`
/// required to create one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointFields {
    pub url: Option<String>,
    pub events: Option<Vec<EventType>>,
    pub workflow_ids: Option<Vec<WorkflowId>>,
    pub description: Option<Option<String>>,
    /// Deliveries per second at most (`Some(None)`: no limit).
    pub rate_limit: Option<Option<u32>>,
    pub disabled: Option<bool>,
}

fn at(field: &str) -> Path {
    Path::root().key(field)
}

/// An id as an error message shows it (at most 100 characters).
fn shown(id: &str) -> String {
    let mut s: String = id.chars().take(100).collect();
    if s.len() < id.len() {
        s.push('…');
    }
    s
}

/// The deliveries being sent now, in all and per workspace (shared by
/// every pass, so a pass leaves out what another is sending).
#[derive(Default)]
pub(super) struct Sending {
    inner: std::sync::Mutex<SendingInner>,
    /// Told each time a send ends (a place is free again).
    freed: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct SendingInner {
    ids: std::collections::HashSet<String>,
    per_workspace: std::collections::HashMap<WorkspaceId, usize>,
}

/// Held while one delivery is sent; gives its place back when dropped.
struct Slot {
    app: std::sync::Arc<App>,
    id: String,
    ws: WorkspaceId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.sending.freed.notify_one();
        if let Ok(mut s) = self.app.sending.inner.lock() {
            s.ids.remove(&self.id);
            if let Some(n) = s.per_workspace.get_mut(&self.ws) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.per_workspace.remove(&self.ws);
                }
            }
        }
    }
}

impl Sending {
    /// A place to send `d` now (None: it is being sent, or its workspace or
    /// everyone has no place left).
    fn take(&self, app: &std::sync::Arc<App>, d: &Delivery) -> Option<Slot> {
        let mut s = self.inner.lock().ok()?;
        let mine = s.per_workspace.get(&d.workspace_id).copied().unwrap_or(0);
        if s.ids.len() >= SENDING_AT_ONCE || mine >= SENDING_PER_WORKSPACE || s.ids.contains(&d.id)
        {
            return None;
        }
        s.ids.insert(d.id.clone());
        *s.per_workspace.entry(d.workspace_id.clone()).or_default() += 1;
        Some(Slot {
            app: app.clone(),
            id: d.id.clone(),
            ws: d.workspace_id.clone(),
        })
    }

    /// The workspaces with no place left.
    fn full_workspaces(&self) -> Vec<WorkspaceId> {
        self.inner.lock().map_or_else(
            |_| Vec::new(),
            |s| {
                s.per_workspace
                    .iter()
                    .filter(|(_, n)| **n >= SENDING_PER_WORKSPACE)
                    .map(|(w, _)| w.clone())
                    .collect()
            },
        )
    }

    fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.ids.len())
    }
}

/// A delivery's id: the same for one event to one endpoint (`parts` name
/// both; a repeated pass makes it once), sorting by when the event was.
fn delivery_id(at: DateTime<Utc>, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let ms = at.timestamp_millis().max(0) as u64;
    let id = ulid::Ulid::from_parts(ms, u128::from_be_bytes(random));
    format!("msg_{}", id.to_string().to_lowercase())
}

/// The smallest delivery id of an event at or after `at`.
fn delivery_id_floor(at: DateTime<Utc>) -> String {
    let id = ulid::Ulid::from_parts(at.timestamp_millis().max(0) as u64, 0);
    format!("msg_{}", id.to_string().to_lowercase())
}

impl App {
    fn sender(&self) -> Result<&Sender, AppError> {
        self.webhook_sender
            .get_or_init(|| Sender::new(self.egress.clone()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| AppError::Internal(format!("the webhook client: {e}")))
    }

    async fn check_endpoint(&self, ws: &WorkspaceId, f: &EndpointFields) -> Result<(), AppError> {
        let mut errors = Vec::new();
        if let Some(url) = &f.url {
            if url.len() > MAX_URL_BYTES {
                errors.push(ValidationError::new(
                    &at("url"),
                    format!("longer than {MAX_URL_BYTES} bytes"),
                ));
            } else if let Err(why) = self.sender()?.check_url(url) {
                errors.push(ValidationError::new(&at("url"), why));
            }
        }
        if f.events.as_ref().is_some_and(Vec::is_empty) {
            errors.push(ValidationError::new(
                &at("events"),
                format!("name at least one event ({})", EventType::names()),
            ));
        }
        if let Some(wfs) = &f.workflow_ids {
            if wfs.len() > MAX_ENDPOINT_WORKFLOWS {
                errors.push(ValidationError::new(
                    &at("workflow_ids"),
                    format!("at most {MAX_ENDPOINT_WORKFLOWS} workflows"),
                ));
            } else {
                for (i, wf) in wfs.iter().enumerate() {
                    match self.get_workflow(ws, wf, None).await {
                        Ok(_) => {}
                        Err(AppError::NotFound(_)) => errors.push(ValidationError::new(
                            &at("workflow_ids").index(i),
                            format!("no workflow `{}` in this workspace", shown(wf.as_str())),
                        )),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if let Some(Some(r)) = f.rate_limit
            && !(1..=MAX_RATE_LIMIT).contains(&r)
        {
            errors.push(ValidationError::new(
                &at("rate_limit"),
                format!("deliveries per second: from 1 to {MAX_RATE_LIMIT}, or null for no limit"),
            ));
        }
        if let Some(Some(d)) = &f.description
            && d.chars().count() > MAX_DESCRIPTION_CHARS
        {
            errors.push(ValidationError::new(
                &at("description"),
                format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::InvalidRequest(errors))
        }
    }

    /// Makes an endpoint and its signing key (kept in the workspace's
    /// secret store); returns it and the key, shown this once.
    pub async fn create_endpoint(
        &self,
        ws: &WorkspaceId,
        f: EndpointFields,
    ) -> Result<(Endpoint, String), AppError> {
        self.check_endpoint(ws, &f).await?;
        let now = Utc::now();
        let id = EndpointId::generate();
        let (name, secret) = self.new_signing_key(ws, &id).await?;
        let e = Endpoint {
            workspace_id: ws.clone(),
            id,
            url: f.url.unwrap_or_default(),
            events: f.events.unwrap_or_else(|| EventType::ALL.to_vec()),
            workflow_ids: f.workflow_ids.unwrap_or_default(),
            description: f.description.flatten(),
            rate_limit: f.rate_limit.flatten(),
            disabled: f.disabled.unwrap_or(false),
            disabled_reason: None,
            failing_since: None,
            keys: vec![SigningKey {
                secret_name: name.clone(),
                expires_at: None,
            }],
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        let made = self
            .stores
            .webhooks
            .create_endpoint(&e, MAX_ENDPOINTS_PER_WORKSPACE)
            .await;
        if !matches!(made, Ok(true)) {
            self.forget_signing_keys(ws, std::slice::from_ref(&name))
                .await;
        }
        if !made? {
            return Err(AppError::BadRequest(format!(
                "this workspace has {MAX_ENDPOINTS_PER_WORKSPACE} webhook endpoints, the most it may have"
            )));
        }
        Ok((e, secret))
    }

    /// A new signing key of endpoint `id`, stored: its name and value.
    async fn new_signing_key(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> Result<(String, String), AppError> {
        let (name, secret) = (SigningKey::new_name(id), sign::new_secret());
        self.stores.secrets.put_secret(ws, &name, &secret).await?;
        Ok((name, secret))
    }

    /// Deletes signing keys no endpoint uses any more (a failure is logged:
    /// the key is unused, only left behind).
    async fn forget_signing_keys(&self, ws: &WorkspaceId, names: &[String]) {
        for name in names {
            if let Err(e) = self.stores.secrets.delete_secret(ws, name).await {
                tracing::warn!(workspace_id = %ws, error = %e, "deleting an unused webhook signing key");
            }
        }
    }

    /// The values of the keys that sign for `e` at `now` (read from the
    /// secret store once per process: a key's name is never reused).
    pub(super) async fn signing_secrets(
        &self,
        e: &Endpoint,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, AppError> {
        let mut out = Vec::new();
        for name in e.signing_keys(now) {
            let cached = self
                .signing_cache
                .lock()
                .ok()
                .and_then(|c| c.get(name).cloned());
            let value = match cached {
                Some(v) => Some(v),
                None => {
                    let v = self
                        .stores
                        .secrets
                        .get_secret(&e.workspace_id, name)
                        .await?;
                    if let (Some(v), Ok(mut c)) = (&v, self.signing_cache.lock()) {
                        if c.len() >= SIGNING_KEYS_KEPT {
                            c.clear();
                        }
                        c.insert(name.to_owned(), v.clone());
                    }
                    v
                }
            };
            out.extend(value);
        }
        Ok(out)
    }

    pub async fn list_endpoints(&self, ws: &WorkspaceId) -> Result<Vec<Endpoint>, AppError> {
        Ok(self.stores.webhooks.list_endpoints(ws).await?)
    }

    pub async fn get_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> Result<Endpoint, AppError> {
        self.stores
            .webhooks
            .get_endpoint(ws, id)
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!("no webhook endpoint `{}`", shown(id.as_str())))
            })
    }

    /// Changes the fields given (re-enabling one Weft disabled clears why).
    pub async fn update_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
        f: EndpointFields,
    ) -> Result<Endpoint, AppError> {
        self.check_endpoint(ws, &f).await?;
        self.change_endpoint(ws, id, |e| {
            if let Some(u) = &f.url {
                e.url = u.clone();
            }
            if let Some(ev) = &f.events {
                e.events = ev.clone();
            }
            if let Some(w) = &f.workflow_ids {
                e.workflow_ids = w.clone();
            }
            if let Some(r) = f.rate_limit {
                e.rate_limit = r;
            }
            if let Some(d) = &f.description {
                e.description = d.clone();
            }
            if let Some(off) = f.disabled {
                e.disabled = off;
                if !off {
                    e.disabled_reason = None;
                    e.failing_since = None;
                }
            }
        })
        .await
    }

    /// A new signing key; the one it replaces goes on signing for 24
    /// hours (the endpoint's receiver can switch over meanwhile), and one
    /// replaced before (a second rotation within the day) stops. Returns
    /// the endpoint and the new key, shown this once.
    pub async fn rotate_endpoint_secret(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> Result<(Endpoint, String), AppError> {
        for _ in 0..crate::ports::WRITE_TRIES {
            let mut e = self.get_endpoint(ws, id).await?;
            let (name, secret) = self.new_signing_key(ws, id).await?;
            let now = Utc::now();
            let mut keys = vec![SigningKey {
                secret_name: name.clone(),
                expires_at: None,
            }];
            if let Some(current) = e.keys.iter().find(|k| k.expires_at.is_none()) {
                keys.push(SigningKey {
                    secret_name: current.secret_name.clone(),
                    expires_at: Some(now + Duration::hours(OLD_KEY_HOURS)),
                });
            }
            let dropped: Vec<String> = e
                .keys
                .iter()
                .filter(|k| keys.iter().all(|n| n.secret_name != k.secret_name))
                .map(|k| k.secret_name.clone())
                .collect();
            e.keys = keys;
            e.updated_at = now;
            e.revision += 1;
            match self.stores.webhooks.save_endpoint(&e).await {
                Ok(()) => {
                    self.forget_signing_keys(ws, &dropped).await;
                    return Ok((e, secret));
                }
                Err(StoreError::Conflict(_)) => {
                    self.forget_signing_keys(ws, std::slice::from_ref(&name))
                        .await;
                }
                Err(other) => {
                    self.forget_signing_keys(ws, std::slice::from_ref(&name))
                        .await;
                    return Err(other.into());
                }
            }
        }
        Err(AppError::Conflict(format!(
            "webhook endpoint `{id}` is being changed by another request; try again"
        )))
    }

    async fn change_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
        change: impl Fn(&mut Endpoint),
    ) -> Result<Endpoint, AppError> {
        for _ in 0..crate::ports::WRITE_TRIES {
            let mut e = self.get_endpoint(ws, id).await?;
            change(&mut e);
            e.updated_at = Utc::now();
            e.revision += 1;
            match self.stores.webhooks.save_endpoint(&e).await {
                Ok(()) => return Ok(e),
                Err(StoreError::Conflict(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(AppError::Conflict(format!(
            "webhook endpoint `{id}` is being changed by another request; try again"
        )))
    }

    pub async fn delete_endpoint(&self, ws: &WorkspaceId, id: &EndpointId) -> Result<(), AppError> {
        let keys: Vec<String> = match self.stores.webhooks.get_endpoint(ws, id).await? {
            Some(e) => e.keys.into_iter().map(|k| k.secret_name).collect(),
            None => Vec::new(),
        };
        if self.stores.webhooks.delete_endpoint(ws, id).await? {
            self.forget_signing_keys(ws, &keys).await;
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "no webhook endpoint `{}`",
                shown(id.as_str())
            )))
        }
    }

    pub async fn list_deliveries(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> Result<Page<Delivery>, AppError> {
        self.get_endpoint(ws, id).await?;
        Ok(self
            .stores
            .webhooks
            .list_deliveries(ws, id, status, page)
            .await?)
    }

    /// A delivery by its id alone (looked for at each of the workspace's
    /// endpoints: at most `MAX_ENDPOINTS_PER_WORKSPACE` reads).
    pub async fn get_delivery(&self, ws: &WorkspaceId, id: &str) -> Result<Delivery, AppError> {
        if id.starts_with("msg_") && id.len() <= 40 {
            for e in self.stores.webhooks.list_endpoints(ws).await? {
                if let Some(d) = self.stores.webhooks.get_delivery(ws, &e.id, id).await? {
                    return Ok(d);
                }
            }
        }
        Err(AppError::NotFound(format!("no delivery `{}`", shown(id))))
    }

    /// Replays the failed deliveries to an endpoint of events at or after
    /// `since` (a delivery's id sorts by its event's time: the listing,
    /// newest first, is read down to `since`), at most
    /// `MAX_REPLAYED_AT_ONCE` a call. Returns how many it replayed, and
    /// whether there may be more (call again).
    pub async fn replay_failed_since(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        since: DateTime<Utc>,
    ) -> Result<(usize, bool), AppError> {
        self.check_replayable(ws, endpoint).await?;
        let oldest = delivery_id_floor(since);
        let mut page = PageRequest {
            limit: 100,
            cursor: None,
        };
        let mut replayed = Vec::new();
        let more = 'pages: loop {
            let got = self
                .stores
                .webhooks
                .list_deliveries(ws, endpoint, Some(DeliveryStatus::Failed), &page)
                .await?;
            for d in &got.items {
                if d.id < oldest {
                    break 'pages false;
                }
                if replayed.len() >= MAX_REPLAYED_AT_ONCE {
                    break 'pages true;
                }
                if let Ok(d) = self.replay(ws, endpoint, &d.id).await {
                    replayed.push(DeliveryRef::from(&d));
                }
            }
            match got.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break false,
            }
        };
        self.hand_over(&replayed).await;
        Ok((replayed.len(), more))
    }

    async fn check_replayable(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
    ) -> Result<(), AppError> {
        if self.get_endpoint(ws, endpoint).await?.disabled {
            return Err(AppError::Conflict(format!(
                "webhook endpoint `{endpoint}` is disabled: turn it back on (PATCH {{\"disabled\": false}}) to replay to it"
            )));
        }
        Ok(())
    }

    /// Sends a delivery again (at once, then on the retry schedule if it
    /// fails), with the same id and body.
    pub async fn replay_delivery(&self, ws: &WorkspaceId, id: &str) -> Result<Delivery, AppError> {
        let d = self.get_delivery(ws, id).await?;
        self.check_replayable(ws, &d.endpoint_id).await?;
        let d = self.replay(ws, &d.endpoint_id, id).await?;
        self.hand_over(&[DeliveryRef::from(&d)]).await;
        Ok(d)
    }

    async fn replay(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        id: &str,
    ) -> Result<Delivery, AppError> {
        let not_found = || AppError::NotFound(format!("no delivery `{}`", shown(id)));
        for _ in 0..crate::ports::WRITE_TRIES {
            let mut d = self
                .stores
                .webhooks
                .get_delivery(ws, endpoint, id)
                .await?
                .ok_or_else(not_found)?;
            if d.status == DeliveryStatus::Pending {
                return Err(AppError::Conflict(format!(
                    "delivery `{id}` is still being tried; replay it once it has succeeded or failed"
                )));
            }
            d.status = DeliveryStatus::Pending;
            d.round = 0;
            d.next_attempt_at = Some(Utc::now());
            d.revision += 1;
            match self.stores.webhooks.save_delivery(&d).await {
                Ok(()) => return Ok(d),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Conflict(format!(
            "delivery `{id}` is being changed; try again"
        )))
    }

    /// Makes the deliveries of the run events in the outbox (one per
    /// endpoint that wants the event), then forgets them. Returns how many
    /// were made.
    pub async fn notify_ended_runs(&self) -> Result<usize, AppError> {
        let entries = self.stores.webhooks.outbox(ENDED_BATCH).await?;
        let mut endpoints: std::collections::HashMap<WorkspaceId, Vec<Endpoint>> =
            Default::default();
        let mut made = 0;
        for entry in entries {
            let ws = &entry.workspace_id;
            if !endpoints.contains_key(ws) {
                let eps = self.stores.webhooks.list_endpoints(ws).await?;
                endpoints.insert(ws.clone(), eps);
            }
            let eps = endpoints.get(ws).map_or(&[][..], Vec::as_slice);
            // One run that cannot be read holds up no other: it stays in
            // the outbox and is tried again by a later pass.
            match self.notify_run(&entry, eps).await {
                Ok(n) => made += n,
                Err(e) => {
                    tracing::warn!(workspace_id = %ws, run_id = %entry.run_id, error = %e, "making a run's webhook deliveries");
                }
            }
        }
        Ok(made)
    }

    /// Makes the deliveries of one outbox entry, then forgets it.
    async fn notify_run(&self, entry: &OutboxEntry, eps: &[Endpoint]) -> Result<usize, AppError> {
        let ws = &entry.workspace_id;
        let mut made = Vec::new();
        let run = match eps.is_empty() {
            true => None,
            false => self.stores.runs.get_run(ws, &entry.run_id).await?,
        };
        let events = run.as_ref().map_or(&[][..], |_| entry.events.as_slice());
        for (event, run) in events.iter().filter_map(|e| Some((e, run.as_ref()?))) {
            let Some(ty) = event.event_type(run) else {
                continue;
            };
            let wanting: Vec<&Endpoint> = eps
                .iter()
                .filter(|e| e.wants(ty, Some(&run.workflow_id)))
                .collect();
            if wanting.is_empty() {
                continue;
            }
            let body = payload::run_event(ty, run, event.step());
            let (at, subject) = match event.step() {
                Some(s) => (s.at, s.key.as_str()),
                None => (run.finished_at.unwrap_or(run.created_at), ""),
            };
            for e in wanting {
                let id = delivery_id(at, &[e.id.as_str(), run.id.as_str(), ty.as_str(), subject]);
                let d = Delivery::pending(ws, id, &e.id, ty, Some(run.id.clone()), body.clone());
                if self.stores.webhooks.create_delivery(&d).await? {
                    made.push(DeliveryRef::from(&d));
                }
            }
        }
        self.stores.webhooks.forget_outbox(entry).await?;
        self.hand_over(&made).await;
        Ok(made.len())
    }

    /// Starts sending the deliveries that are due, as far as there are
    /// places (`SENDING_AT_ONCE`, `SENDING_PER_WORKSPACE`), each in a task
    /// of its own: a slow endpoint holds up no other send. Returns how
    /// many it started; `webhooks_idle` waits for them.
    pub async fn deliver_due(
        self: &std::sync::Arc<Self>,
        now: DateTime<Utc>,
    ) -> Result<usize, AppError> {
        if self.sending.len() >= SENDING_AT_ONCE {
            return Ok(0);
        }
        let busy = self.sending.full_workspaces();
        let due = self
            .stores
            .webhooks
            .due_deliveries(now, DUE_BATCH, &busy)
            .await?;
        let mut started = 0;
        for d in due {
            let Some(slot) = self.sending.take(self, &d) else {
                continue;
            };
            started += 1;
            tokio::spawn(async move {
                let (ws, id) = (d.workspace_id.clone(), d.id.clone());
                if let Err(e) = slot.app.attempt(d).await.map(drop) {
                    tracing::warn!(workspace_id = %ws, delivery_id = %id, error = %e, "a webhook delivery could not be tried");
                }
                drop(slot);
            });
        }
        Ok(started)
    }

    /// Hands deliveries that are due now to the delivery queue, if there
    /// is one (else the sender loop finds them). A failure is logged: the
    /// tick's `hand_over_due` hands them on later.
    async fn hand_over(&self, refs: &[DeliveryRef]) {
        let Some(queue) = &self.delivery_queue else {
            return;
        };
        if refs.is_empty() {
            return;
        }
        if let Err(e) = queue.enqueue(refs, std::time::Duration::ZERO).await {
            tracing::warn!(deliveries = refs.len(), error = %e, "handing webhook deliveries to the queue; the tick hands them on later");
        }
    }

    /// The tick's sweep of the delivery queue: hands on each pending
    /// delivery due `QUEUE_GRACE` ago or before (its message was lost, it
    /// waited longer than a queue holds one back, or a send stopped half
    /// way). Returns how many it handed on.
    pub async fn hand_over_due(&self, now: DateTime<Utc>) -> Result<usize, AppError> {
        let Some(queue) = &self.delivery_queue else {
            return Ok(0);
        };
        let due = self
            .stores
            .webhooks
            .due_deliveries(now - QUEUE_GRACE, DUE_BATCH, &[])
            .await?;
        let refs: Vec<DeliveryRef> = due.iter().map(DeliveryRef::from).collect();
        queue.enqueue(&refs, std::time::Duration::ZERO).await?;
        Ok(refs.len())
    }

    /// One message of the delivery queue: tries the delivery if it is
    /// still pending and due, and hands it on again with the wait before
    /// its next attempt (if the queue can hold it that long; the tick does
    /// otherwise).
    pub async fn deliver_one(&self, r: &DeliveryRef) -> Result<Delivered, AppError> {
        let d = self
            .stores
            .webhooks
            .get_delivery(&r.workspace_id, &r.endpoint_id, &r.id)
            .await?;
        let Some(d) = d.filter(|d| d.status == DeliveryStatus::Pending) else {
            return Ok(Delivered::NotDue);
        };
        let now = Utc::now();
        // Not yet (a repeated message, or one being sent elsewhere): the
        // message that holds its due time, or the tick, tries it.
        if d.next_attempt_at
            .is_none_or(|t| t > now + Duration::seconds(1))
        {
            return Ok(Delivered::NotDue);
        }
        let Some((d, sent)) = self.attempt(d).await? else {
            return Ok(Delivered::NotDue);
        };
        let ok = d.status == DeliveryStatus::Succeeded;
        if let (Some(queue), Some(next)) = (&self.delivery_queue, d.next_attempt_at) {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            if wait <= crate::ports::MAX_QUEUE_DELAY
                && let Err(e) = queue.enqueue(&[DeliveryRef::from(&d)], wait).await
            {
                tracing::warn!(workspace_id = %d.workspace_id, delivery_id = %d.id, error = %e, "handing a delivery's next attempt to the queue; the tick hands it on later");
            }
        }
        Ok(match sent {
            true => Delivered::Tried { ok },
            false => Delivered::NotDue,
        })
    }

    /// What is told each time a send ends (the sender loop waits on it
    /// when it started nothing, as for new deliveries).
    pub fn webhook_send_ended(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.sending.freed.clone()
    }

    /// Waits until no delivery is being sent, or `most` has passed.
    pub async fn webhooks_idle(&self, most: std::time::Duration) {
        let until = tokio::time::Instant::now() + most;
        while self.sending.len() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// One attempt of a delivery: held from other senders for the time it
    /// takes, sent, and its outcome recorded. Returns the delivery as
    /// saved and whether it was sent (false: its endpoint's rate limit put
    /// it off a second); None: another sender has it, or its endpoint is
    /// gone.
    async fn attempt(&self, mut d: Delivery) -> Result<Option<(Delivery, bool)>, AppError> {
        let now = Utc::now();
        let endpoint = self
            .stores
            .webhooks
            .get_endpoint(&d.workspace_id, &d.endpoint_id)
            .await?;
        let Some(endpoint) = endpoint.filter(|e| !e.disabled) else {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            d.attempts.push(DeliveryAttempt {
                at: now,
                status_code: None,
                error: Some("the endpoint was deleted or disabled".into()),
                duration_ms: 0,
                response: None,
            });
            d.revision += 1;
            return match self.stores.webhooks.save_delivery(&d).await {
                Ok(()) | Err(StoreError::Conflict(_)) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        // Over the endpoint's rate: put off to the next second (not an
        // attempt).
        if let Some(limit) = endpoint.rate_limit
            && !self
                .stores
                .webhooks
                .take_send(&d.workspace_id, &d.endpoint_id, now.timestamp(), limit)
                .await?
        {
            let jitter = Duration::milliseconds(rand::random_range(0..500));
            d.next_attempt_at = Some(now + Duration::seconds(1) + jitter);
            d.revision += 1;
            return match self.stores.webhooks.save_delivery(&d).await {
                Ok(()) => Ok(Some((d, false))),
                Err(StoreError::Conflict(_)) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        // Held: another sender that read it due finds it changed.
        d.next_attempt_at = Some(now + Duration::seconds(SEND_LEASE_SECS));
        d.revision += 1;
        match self.stores.webhooks.save_delivery(&d).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let ts = now.timestamp();
        let secrets = self.signing_secrets(&endpoint, now).await?;
        let signature = sign::header(
            secrets.iter().map(String::as_str),
            &d.id,
            ts,
            d.payload.as_bytes(),
        );
        let started = std::time::Instant::now();
        let (outcome, response) = self
            .sender()?
            .send(&endpoint.url, &d.id, ts, &signature, &d.payload)
            .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        d.round += 1;
        let (status_code, error, after) = match &outcome {
            Outcome::Accepted(s) => (Some(*s), None, None),
            Outcome::Gone => (
                Some(410),
                Some("answered 410 Gone: the endpoint is disabled".to_owned()),
                None,
            ),
            Outcome::Failed {
                status,
                error,
                retry_after,
            } => (*status, Some(error.clone()), *retry_after),
        };
        d.attempts.push(DeliveryAttempt {
            at: now,
            status_code,
            error,
            duration_ms,
            response,
        });
        // The history a delivery keeps is bounded (a replayed one grows).
        if d.attempts.len() > 3 * schedule::MAX_ATTEMPTS {
            d.attempts
                .drain(..d.attempts.len() - 3 * schedule::MAX_ATTEMPTS);
        }
        match outcome {
            Outcome::Accepted(_) => {
                d.status = DeliveryStatus::Succeeded;
                d.next_attempt_at = None;
                if endpoint.failing_since.is_some() {
                    self.endpoint_health(&endpoint, None).await;
                }
            }
            Outcome::Gone => {
                d.status = DeliveryStatus::Failed;
                d.next_attempt_at = None;
                let reason = format!("answered 410 Gone at {}", now.to_rfc3339());
                self.endpoint_health(&endpoint, Some(reason)).await;
            }
            Outcome::Failed { .. } => {
                match schedule::next_wait(d.round as usize, after) {
                    Some(wait) => d.next_attempt_at = Some(Utc::now() + wait),
                    None => {
                        d.status = DeliveryStatus::Failed;
                        d.next_attempt_at = None;
                    }
                }
                match endpoint.failing_since {
                    None => self.endpoint_failing(&endpoint, now).await,
                    Some(since) if now - since >= Duration::days(FAILING_DAYS_TO_DISABLE) => {
                        let reason = format!(
                            "every delivery failed since {} ({FAILING_DAYS_TO_DISABLE} days)",
                            since.to_rfc3339()
                        );
                        self.endpoint_health(&endpoint, Some(reason)).await;
                    }
                    Some(_) => {}
                }
            }
        }
        d.revision += 1;
        match self.stores.webhooks.save_delivery(&d).await {
            Ok(()) => Ok(Some((d, true))),
            // Deleted with its endpoint meanwhile (or taken over after the
            // hold ended: that sender records its own attempt).
            Err(StoreError::Conflict(_)) => {
                tracing::debug!(workspace_id = %d.workspace_id, delivery_id = %d.id, "a delivery changed while it was sent; this attempt is not recorded");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Notes that an endpoint's deliveries began failing at `at`.
    async fn endpoint_failing(&self, e: &Endpoint, at: DateTime<Utc>) {
        let marked = self
            .change_endpoint(&e.workspace_id, &e.id, |e| {
                e.failing_since.get_or_insert(at);
            })
            .await;
        match marked {
            Ok(_) | Err(AppError::NotFound(_)) => {}
            Err(err) => {
                tracing::warn!(workspace_id = %e.workspace_id, endpoint_id = %e.id, error = %err, "noting that a webhook endpoint fails");
            }
        }
    }

    /// Records how an endpoint fares after an attempt: healthy again
    /// (None), or disabled for `reason` (then the workspace's endpoints
    /// that take `endpoint.disabled` are told).
    async fn endpoint_health(&self, e: &Endpoint, disable: Option<String>) {
        let (ws, id) = (&e.workspace_id, &e.id);
        let changed = self
            .change_endpoint(ws, id, |e| match &disable {
                None => e.failing_since = None,
                Some(reason) => {
                    e.disabled = true;
                    e.disabled_reason = Some(reason.clone());
                }
            })
            .await;
        match changed {
            // Deleted meanwhile.
            Err(AppError::NotFound(_)) => {}
            Err(err) => {
                tracing::warn!(workspace_id = %ws, endpoint_id = %id, error = %err, "recording a webhook endpoint's health");
            }
            Ok(now) if disable.is_some() => {
                tracing::info!(workspace_id = %ws, endpoint_id = %id, "a webhook endpoint is disabled");
                if let Err(err) = self.tell_disabled(&now).await {
                    tracing::warn!(workspace_id = %ws, endpoint_id = %id, error = %err, "telling of a disabled webhook endpoint");
                }
            }
            Ok(_) => {}
        }
    }

    /// Makes the `endpoint.disabled` deliveries of `gone` (to the other
    /// endpoints of its workspace that take it).
    async fn tell_disabled(&self, gone: &Endpoint) -> Result<(), AppError> {
        let at = gone.updated_at;
        let mut made = Vec::new();
        let body = payload::endpoint_disabled(gone, at);
        for e in self
            .stores
            .webhooks
            .list_endpoints(&gone.workspace_id)
            .await?
        {
            if e.id == gone.id || !e.wants(EventType::EndpointDisabled, None) {
                continue;
            }
            let stamp = at.to_rfc3339();
            let id = delivery_id(
                at,
                &[
                    e.id.as_str(),
                    gone.id.as_str(),
                    EventType::EndpointDisabled.as_str(),
                    &stamp,
                ],
            );
            let d = Delivery::pending(
                &gone.workspace_id,
                id,
                &e.id,
                EventType::EndpointDisabled,
                None,
                body.clone(),
            );
            if self.stores.webhooks.create_delivery(&d).await? {
                made.push(DeliveryRef::from(&d));
            }
        }
        self.hand_over(&made).await;
        Ok(())
    }
}
