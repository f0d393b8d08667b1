//! The validated, typed form of a workflow definition. Only `dsl::parse` builds
//! these, so holding a `Workflow` means the definition passed every check.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::domain::Usd;

#[derive(Clone, Debug)]
pub struct Workflow {
    /// The id the author chose (`"id"` in the definition), if any.
    pub id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    /// The author's own version label (`"version": "1.0"`); Weft numbers
    /// stored versions separately.
    pub label: Option<String>,
    pub steps: Vec<Step>,
    /// Template for the run's output; by default the outputs of the final steps.
    pub output: Option<Value>,
    /// JSON Schema the run input must satisfy.
    pub input_schema: Option<Value>,
    /// Most a run may spend on model calls, in USD (a run can lower or raise
    /// it when it starts).
    pub budget_usd: Option<Usd>,
    /// The events that start a run of it.
    pub triggers: Vec<Trigger>,
}

/// An event that starts a run of a workflow (`triggers`).
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// The event's name.
    pub event: String,
    /// An expression over `event` (`name`, `id`, `data`): a run starts only
    /// when it is true.
    pub condition: Option<String>,
}

impl Workflow {
    /// True if any step, map sub-steps included, is an `llm` step.
    pub fn calls_models(&self) -> bool {
        fn any(steps: &[Step]) -> bool {
            steps.iter().any(|s| match &s.kind {
                StepKind::Llm(_) => true,
                StepKind::Map(m) => any(&m.steps),
                _ => false,
            })
        }
        any(&self.steps)
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// Steps of the same scope this one waits for: explicit `depends_on`,
    /// references in its templates, and the condition whose branch lists it.
    pub depends_on: Vec<String>,
    /// The `if` expression: false skips the step.
    pub when: Option<String>,
    /// Set when a condition step lists this step in `then` (true) or `else` (false).
    pub branch: Option<Branch>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub continue_on_error: bool,
    /// The names its templates read (`trigger`, step ids, `item`, …): all
    /// a step's context needs to hold.
    pub reads: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub condition: String,
    pub when: bool,
}

#[derive(Clone, Debug)]
pub enum StepKind {
    Transform(Transform),
    Condition(Condition),
    Map(Map),
    Delay(Delay),
    Approval(Approval),
    WaitForEvent(WaitForEvent),
    Http(Http),
    Llm(Llm),
}

impl StepKind {
    /// Steps that do I/O run outside the planner, through a step executor.
    pub fn is_external(&self) -> bool {
        matches!(self, Self::Http(_) | Self::Llm(_))
    }

    /// The canonical type name recorded with the step.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Transform(_) => "transform",
            Self::Condition(_) => "condition",
            Self::Map(_) => "map",
            Self::Delay(_) => "delay",
            Self::Approval(_) => "approval",
            Self::WaitForEvent(_) => "wait_for_event",
            Self::Http(_) => "http",
            Self::Llm(_) => "llm",
        }
    }
}

/// Waits for an event (`POST /v1/events`) of a name.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitForEvent {
    /// The event's name.
    pub event: String,
    /// An expression over `event`, `trigger` and `run`: the first event
    /// of the name for which it holds completes the step.
    pub matches: Option<String>,
    /// How far back before the step began waiting an event counts (the
    /// oldest that matches wins); None: only events from then on.
    pub lookback: Option<std::time::Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransformAction {
    /// Output is `inputs` with every template rendered.
    Template,
    /// Output is the first JSON object or array found in `inputs.text`.
    ExtractJson,
    /// Output is `inputs.text` parsed as JSON.
    ParseJson,
    /// Output is the value of `expression`.
    Expression(String),
}

#[derive(Clone, Debug)]
pub struct Transform {
    pub action: TransformAction,
    pub inputs: Value,
}

#[derive(Clone, Debug)]
pub struct Condition {
    pub expression: String,
    pub then_steps: Vec<String>,
    pub else_steps: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Map {
    /// A template that must produce a list.
    pub items: Value,
    pub concurrency: usize,
    /// The sub-graph run for each item; `item` and `index` are in scope.
    pub steps: Vec<Step>,
    /// Template for each iteration's result; by default the final sub-step's output.
    pub output: Option<Value>,
    /// The names `output` reads.
    pub output_reads: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub enum Delay {
    For(Duration),
    /// A template producing an RFC 3339 timestamp.
    Until(String),
}

/// An HTTP request; every field may hold templates.
#[derive(Clone, Debug)]
pub struct Http {
    pub method: String,
    pub url: String,
    pub query: Value,
    pub headers: Value,
    pub body: Option<Value>,
    /// The strings of the request that insert secrets.
    pub secrets: Vec<SecretSlot>,
}

/// A string of an http request that inserts secrets: where it is (`url`,
/// `query.NAME`, `headers.NAME`, or a place in `body`) and its parts, split
/// at each `{{ secrets.NAME }}` when the definition was validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSlot {
    pub path: Vec<PathSeg>,
    pub parts: Vec<crate::template::Part>,
}

/// A segment of a slot's path (the same type the executor reads).
pub use crate::ports::PathSeg;

/// A model call. `provider` defaults to the server's default provider.
#[derive(Clone, Debug)]
pub struct Llm {
    pub provider: Option<String>,
    pub model: String,
    /// `prompt` becomes one user message; or `messages` (a template or a
    /// list of `{"role", "content"}`).
    pub messages: Value,
    pub system: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: u32,
    /// Ask for JSON and parse the reply into the output's `json`.
    pub json: bool,
    /// Tried in order when a call fails with a rate limit, a server error,
    /// a timeout or a too-long context.
    pub fallback: Vec<ModelRef>,
    /// A (cheaper) model for attempts after the first.
    pub retry_model: Option<String>,
    pub inputs: Value,
    /// Reuse the output of an identical call made within this long.
    pub cache_ttl: Option<std::time::Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelRef {
    pub provider: Option<String>,
    pub model: String,
}

#[derive(Clone, Debug)]
pub struct Approval {
    pub message: Option<String>,
}

/// How a failed attempt is retried. Delays grow from `initial_interval` by
/// `multiplier` up to `max_interval`, each spread by ±`jitter` (a fraction).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            multiplier: 2.0,
            max_interval: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl Workflow {
    /// Finds the step a key names: `id` at the top level, `map.3.sub` inside
    /// iteration 3 of map step `map` (nesting repeats the pattern).
    pub fn step_by_key(&self, key: &str) -> Option<&Step> {
        let mut parts = key.split('.');
        let first = parts.next()?;
        let mut step = self.steps.iter().find(|s| s.id == first)?;
        loop {
            let Some(index) = parts.next() else {
                return Some(step);
            };
            index.parse::<usize>().ok()?;
            let sub = parts.next()?;
            let StepKind::Map(map) = &step.kind else {
                return None;
            };
            step = map.steps.iter().find(|s| s.id == sub)?;
        }
    }
}
