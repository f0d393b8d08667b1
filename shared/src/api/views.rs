//! What the API answers, one `Serialize` type per resource, borrowing from
//! the records they show.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::app::RunView;
use crate::app::usage::UsageReport;
use crate::domain::*;
use crate::ports::{Page, SecretMeta};

fn ms_between(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<i64> {
    Some((b? - a?).num_milliseconds())
}

/// A page of a listing: `{"items": [...], "next_cursor": ...}`.
#[derive(Serialize)]
pub struct PageView<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> PageView<T> {
    pub fn of<'a, R>(page: &'a Page<R>, view: impl Fn(&'a R) -> T) -> Self {
        PageView {
            items: page.items.iter().map(view).collect(),
            next_cursor: page.next_cursor.as_ref().map(|c| c.encode()),
        }
    }
}

#[derive(Serialize)]
pub struct WorkflowView<'a> {
    pub id: &'a WorkflowId,
    pub version: u32,
    pub name: &'a str,
    pub definition: &'a Value,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<&'a str>,
}

impl<'a> From<&'a WorkflowVersion> for WorkflowView<'a> {
    fn from(v: &'a WorkflowVersion) -> Self {
        WorkflowView {
            id: &v.id,
            version: v.version,
            name: &v.name,
            definition: &v.definition,
            created_at: v.created_at,
            archived_at: v.archived_at,
            created_by: v.created_by.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct WorkflowSummaryView<'a> {
    pub id: &'a WorkflowId,
    pub name: &'a str,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a WorkflowSummary> for WorkflowSummaryView<'a> {
    fn from(s: &'a WorkflowSummary) -> Self {
        WorkflowSummaryView {
            id: &s.id,
            name: &s.name,
            version: s.latest_version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct RunLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub logs: String,
}

/// What `POST /v1/workflows/{id}/runs` answers: only facts fixed at creation,
/// so a replay with the same Idempotency-Key gets the same body.
#[derive(Serialize)]
pub struct RunAccepted<'a> {
    pub run_id: &'a RunId,
    pub workflow_id: &'a WorkflowId,
    pub workflow_version: u32,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub links: RunLinks,
}

impl<'a> From<&'a RunRecord> for RunAccepted<'a> {
    fn from(r: &'a RunRecord) -> Self {
        RunAccepted {
            run_id: &r.id,
            workflow_id: &r.workflow_id,
            workflow_version: r.workflow_version,
            status: RunStatus::Pending,
            created_at: r.created_at,
            links: RunLinks {
                this: format!("/v1/runs/{}", r.id),
                logs: format!("/v1/runs/{}/logs", r.id),
            },
        }
    }
}

/// A run in listings: no steps, input or output (read the run for those).
#[derive(Serialize)]
pub struct RunSummaryView<'a> {
    pub run_id: &'a RunId,
    pub workflow_id: &'a WorkflowId,
    pub workflow_version: u32,
    pub status: RunStatus,
    pub error: Option<&'a StepError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub budget_usd: Option<Usd>,
}

impl<'a> From<&'a RunRecord> for RunSummaryView<'a> {
    fn from(r: &'a RunRecord) -> Self {
        let end = r.finished_at.or_else(|| r.started_at.map(|_| Utc::now()));
        RunSummaryView {
            run_id: &r.id,
            workflow_id: &r.workflow_id,
            workflow_version: r.workflow_version,
            status: r.status,
            error: r.error.as_ref(),
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: ms_between(r.started_at, end),
            budget_usd: r.budget_usd,
        }
    }
}

#[derive(Serialize)]
pub struct AttemptView<'a> {
    pub number: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error: Option<&'a StepError>,
}

#[derive(Serialize)]
pub struct StepView<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub step_type: &'a str,
    pub status: StepStatus,
    pub attempts: Vec<AttemptView<'a>>,
    pub output: Option<&'a Value>,
    /// Set when the output is left out of this answer (read the step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_omitted: Option<bool>,
    pub error: Option<&'a StepError>,
    pub reason: Option<&'a str>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub retry_at: Option<DateTime<Utc>>,
    pub wake_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a StepRecord> for StepView<'a> {
    fn from(s: &'a StepRecord) -> Self {
        StepView {
            id: &s.key,
            step_type: &s.step_type,
            status: s.status,
            attempts: s
                .attempts
                .iter()
                .map(|a| AttemptView {
                    number: a.number,
                    started_at: a.started_at,
                    finished_at: a.finished_at,
                    duration_ms: ms_between(Some(a.started_at), a.finished_at),
                    error: a.error.as_ref(),
                })
                .collect(),
            output: s.output.as_ref(),
            output_omitted: None,
            error: s.error.as_ref(),
            reason: s.reason.as_deref(),
            started_at: s.started_at,
            finished_at: s.finished_at,
            duration_ms: s.duration_ms(),
            retry_at: s.retry_at,
            wake_at: s.wake_at,
        }
    }
}

/// Most steps a run's view lists; the rest are in `GET /v1/runs/{id}/steps`.
pub const VIEW_STEPS: usize = 1000;
/// Bytes one answer may spend on step outputs (on AWS an answer is at most
/// 6 MB); an output past it is left out (`output_omitted`) and read with
/// `GET /v1/runs/{id}/steps/{step_id}`.
pub const VIEW_BYTES: usize = 5 * 1024 * 1024;

pub fn size_of(v: &Value) -> usize {
    crate::domain::limits::json_size(v, usize::MAX, usize::MAX).unwrap_or(0)
}

/// A step whose output counts against `budget` (left out if past it, or if
/// it was not read: see `App::with_outputs`).
pub fn step_within<'a>(s: &'a StepRecord, budget: &mut usize) -> StepView<'a> {
    let mut v = StepView::from(s);
    let size = s.output.as_ref().map_or(0, size_of);
    let unread = s.output.is_none() && s.status == StepStatus::Succeeded && s.size > 0;
    if size > *budget || unread {
        v.output = None;
        v.output_omitted = Some(true);
    } else {
        *budget -= size;
    }
    v
}

#[derive(Serialize)]
pub struct StepCounts {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub running: usize,
    pub waiting: usize,
    pub pending: usize,
}

#[derive(Serialize)]
pub struct StepsLink {
    pub steps: String,
}

/// A run with its first steps (as far as one answer holds their outputs).
#[derive(Serialize)]
pub struct RunDetailView<'a> {
    #[serde(flatten)]
    pub summary: RunSummaryView<'a>,
    pub input: &'a Value,
    pub output: Option<&'a Value>,
    pub counts: StepCounts,
    pub usage: Usage,
    pub steps: Vec<StepView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_omitted: Option<usize>,
    pub links: StepsLink,
}

impl<'a> From<&'a RunView> for RunDetailView<'a> {
    fn from(view: &'a RunView) -> Self {
        let r = &view.run;
        let count = |st: StepStatus| view.steps.iter().filter(|s| s.status == st).count();
        let mut budget = VIEW_BYTES
            .saturating_sub(size_of(&r.input))
            .saturating_sub(r.output.as_ref().map_or(0, size_of));
        RunDetailView {
            summary: RunSummaryView::from(r),
            input: &r.input,
            output: r.output.as_ref(),
            counts: StepCounts {
                total: view.steps.len(),
                succeeded: count(StepStatus::Succeeded),
                failed: count(StepStatus::Failed),
                skipped: count(StepStatus::Skipped),
                cancelled: count(StepStatus::Cancelled),
                running: count(StepStatus::Running),
                waiting: count(StepStatus::Waiting),
                pending: count(StepStatus::Pending),
            },
            usage: view.usage,
            steps: view
                .steps
                .iter()
                .take(VIEW_STEPS)
                .map(|s| step_within(s, &mut budget))
                .collect(),
            steps_omitted: (view.steps.len() > VIEW_STEPS).then(|| view.steps.len() - VIEW_STEPS),
            links: StepsLink {
                steps: format!("/v1/runs/{}/steps", r.id),
            },
        }
    }
}

#[derive(Serialize)]
pub struct LogView<'a> {
    pub timestamp: DateTime<Utc>,
    pub level: LogLevel,
    pub step_id: Option<&'a str>,
    pub message: &'a str,
}

impl<'a> From<&'a LogEntry> for LogView<'a> {
    fn from(l: &'a LogEntry) -> Self {
        LogView {
            timestamp: l.timestamp,
            level: l.level,
            step_id: l.step_id.as_deref(),
            message: &l.message,
        }
    }
}

/// A secret: its name and times, never its value.
#[derive(Serialize)]
pub struct SecretView<'a> {
    pub name: &'a str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a SecretMeta> for SecretView<'a> {
    fn from(m: &'a SecretMeta) -> Self {
        SecretView {
            name: &m.name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct DayUsage {
    pub date: NaiveDate,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct WorkflowUsage<'a> {
    pub workflow_id: &'a WorkflowId,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct MonthSpend {
    pub start: NaiveDate,
    pub spent_usd: Usd,
    pub budget_usd: Option<Usd>,
}

/// `GET /v1/usage`.
#[derive(Serialize)]
pub struct UsageReportView<'a> {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub total: Usage,
    pub days: Vec<DayUsage>,
    pub workflows: Vec<WorkflowUsage<'a>>,
    pub month: MonthSpend,
}

impl<'a> From<&'a UsageReport> for UsageReportView<'a> {
    fn from(r: &'a UsageReport) -> Self {
        UsageReportView {
            from: r.range.from,
            to: r.range.to,
            total: r.total,
            days: r
                .days
                .iter()
                .map(|(date, usage)| DayUsage {
                    date: *date,
                    usage: *usage,
                })
                .collect(),
            workflows: r
                .workflows
                .iter()
                .map(|(workflow_id, usage)| WorkflowUsage {
                    workflow_id,
                    usage: *usage,
                })
                .collect(),
            month: MonthSpend {
                start: r.month_start,
                spent_usd: r.month_spent,
                budget_usd: r.month_budget,
            },
        }
    }
}

/// What `POST /v1/events` answers: the runs the event started (or had
/// started, for a repeat of its id) and the workflows it could not start.
#[derive(Serialize)]
pub struct EventAccepted<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub runs: Vec<EventRunView<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<EventErrorView<'a>>,
    /// Steps waiting for the event that it completed.
    pub resumed: Vec<ResumedView<'a>>,
}

#[derive(Serialize)]
pub struct ResumedView<'a> {
    pub run_id: &'a RunId,
    pub step_id: &'a str,
}

#[derive(Serialize)]
pub struct EventRunView<'a> {
    pub workflow_id: &'a WorkflowId,
    pub run_id: &'a RunId,
    pub replayed: bool,
    pub links: RunLinks,
}

#[derive(Serialize)]
pub struct EventErrorView<'a> {
    pub workflow_id: &'a WorkflowId,
    pub detail: &'a str,
}

impl<'a> From<&'a crate::app::EventOutcome> for EventAccepted<'a> {
    fn from(o: &'a crate::app::EventOutcome) -> Self {
        EventAccepted {
            id: &o.id,
            name: &o.name,
            runs: o
                .runs
                .iter()
                .map(|r| EventRunView {
                    workflow_id: &r.workflow_id,
                    run_id: &r.run_id,
                    replayed: r.replayed,
                    links: RunLinks {
                        this: format!("/v1/runs/{}", r.run_id),
                        logs: format!("/v1/runs/{}/logs", r.run_id),
                    },
                })
                .collect(),
            errors: o
                .errors
                .iter()
                .map(|(w, d)| EventErrorView {
                    workflow_id: w,
                    detail: d,
                })
                .collect(),
            resumed: o
                .resumed
                .iter()
                .map(|(run_id, step_id)| ResumedView { run_id, step_id })
                .collect(),
        }
    }
}

/// A schedule, with its next five fire times.
#[derive(Serialize)]
pub struct ScheduleView<'a> {
    pub id: &'a ScheduleId,
    pub workflow_id: &'a WorkflowId,
    pub spec: &'a str,
    pub timezone: &'a str,
    pub input: &'a Value,
    pub paused: bool,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    pub next_fire_times: Vec<DateTime<Utc>>,
    pub last_fire_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<&'a RunId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffered_fire_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How many fire times a schedule's view shows.
pub const SHOWN_FIRE_TIMES: usize = 5;

impl<'a> From<&'a Schedule> for ScheduleView<'a> {
    fn from(s: &'a Schedule) -> Self {
        let next_fire_times = match (
            s.next_fire_at,
            crate::schedules::Timing::parse(&s.spec, &s.timezone, s.created_at),
        ) {
            (Some(first), Ok(t)) => {
                let mut times = vec![first];
                times.extend(t.upcoming(first, SHOWN_FIRE_TIMES - 1));
                times
            }
            _ => Vec::new(),
        };
        ScheduleView {
            id: &s.id,
            workflow_id: &s.workflow_id,
            spec: &s.spec,
            timezone: &s.timezone,
            input: &s.input,
            paused: s.paused,
            catch_up: s.catch_up,
            overlap: s.overlap,
            next_fire_times,
            last_fire_at: s.last_fire_at,
            last_run_id: s.last_run_id.as_ref(),
            buffered_fire_at: s.buffered_fire_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A hook: where to send requests (`path`, on this API's address) and how
/// they are checked. The signing secret is named, never shown.
#[derive(Serialize)]
pub struct HookView<'a> {
    pub id: &'a crate::domain::HookId,
    pub workflow_id: &'a WorkflowId,
    pub path: String,
    pub verify: &'a crate::domain::Verification,
    pub dedupe: Option<&'a str>,
    pub input: Option<&'a Value>,
    pub description: Option<&'a str>,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a crate::domain::Hook> for HookView<'a> {
    fn from(h: &'a crate::domain::Hook) -> Self {
        HookView {
            id: &h.id,
            workflow_id: &h.workflow_id,
            path: format!("/v1/hooks/{}", h.id),
            verify: &h.verification,
            dedupe: h.dedupe.as_deref(),
            input: h.input.as_ref(),
            description: h.description.as_deref(),
            created_at: h.created_at,
        }
    }
}

/// A webhook endpoint (its signing secret is shown only when made or
/// rotated).
#[derive(Serialize)]
pub struct EndpointView<'a> {
    pub id: &'a crate::domain::EndpointId,
    pub url: &'a str,
    pub events: &'a [crate::domain::EventType],
    pub workflow_ids: &'a [WorkflowId],
    pub description: Option<&'a str>,
    /// Deliveries per second at most (null: no limit).
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    pub disabled_reason: Option<&'a str>,
    /// When its deliveries began failing (none since).
    pub failing_since: Option<DateTime<Utc>>,
    pub links: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a crate::domain::Endpoint> for EndpointView<'a> {
    fn from(e: &'a crate::domain::Endpoint) -> Self {
        EndpointView {
            id: &e.id,
            url: &e.url,
            events: &e.events,
            workflow_ids: &e.workflow_ids,
            description: e.description.as_deref(),
            rate_limit: e.rate_limit,
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.as_deref(),
            failing_since: e.failing_since,
            links: serde_json::json!({"deliveries": format!("/v1/endpoints/{}/deliveries", e.id)}),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A delivery and its attempts.
#[derive(Serialize)]
pub struct DeliveryView<'a> {
    pub id: &'a str,
    pub endpoint_id: &'a crate::domain::EndpointId,
    pub event_type: crate::domain::EventType,
    pub run_id: Option<&'a RunId>,
    pub status: crate::domain::DeliveryStatus,
    pub attempts: &'a [crate::domain::DeliveryAttempt],
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub payload: Value,
}

impl<'a> From<&'a crate::domain::Delivery> for DeliveryView<'a> {
    fn from(d: &'a crate::domain::Delivery) -> Self {
        DeliveryView {
            id: &d.id,
            endpoint_id: &d.endpoint_id,
            event_type: d.event_type,
            run_id: d.run_id.as_ref(),
            status: d.status,
            attempts: &d.attempts,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            payload: serde_json::from_str(&d.payload).unwrap_or(Value::Null),
        }
    }
}
