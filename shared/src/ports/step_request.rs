//! What an engine pass hands an executor for one attempt of an I/O step: one
//! type per step kind, its templates rendered. Defaults are set once, where
//! the definition is read (`dsl::parse`); executors read fields, not keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The rendered request of one attempt, by step kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step_type", content = "request", rename_all = "snake_case")]
pub enum StepRequest {
    Http(HttpRequest),
    Llm(LlmRequest),
}

impl StepRequest {
    /// The step type, as definitions name it (what picks the executor).
    pub fn step_type(&self) -> &'static str {
        match self {
            StepRequest::Http(_) => "http",
            StepRequest::Llm(_) => "llm",
        }
    }
}

/// An http step's call. `url`, `query`, `headers` and `body` are what the
/// templates produced (a `url` that is not a string is refused by the
/// executor); a `body` of `null` sends none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: Value,
    #[serde(default)]
    pub query: Value,
    #[serde(default)]
    pub headers: Value,
    #[serde(default)]
    pub body: Value,
    /// The strings that insert secrets, left blank in the fields above; the
    /// executor builds them just before the call (see `step_secrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretString>,
}

/// Where a string that inserts secrets goes in an [`HttpRequest`] (its
/// first segment names the field) and what it is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretString {
    pub path: Vec<PathSeg>,
    pub parts: Vec<SecretPart>,
}

/// A segment of a path into a JSON value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// Rendered text, or the name of a secret to insert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretPart {
    Text(String),
    Secret(String),
}

/// A model call. `provider` of `None` is the server's default provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    pub provider: Option<String>,
    pub model: String,
    /// `{"role", "content"}` objects (checked when rendered).
    pub messages: Vec<Value>,
    pub system: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: u32,
    pub json: bool,
    /// Tried in order after the first model when a call may succeed elsewhere.
    pub fallback: Vec<ModelChoice>,
    /// The model for attempts after the first.
    pub retry_model: Option<String>,
    /// Passed through to the output; never sent to the model.
    pub inputs: Value,
    /// Cache identical calls for this long.
    pub cache_ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChoice {
    pub provider: Option<String>,
    pub model: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_request_carries_its_step_type_beside_it() {
        let r = StepRequest::Http(HttpRequest {
            method: "POST".into(),
            url: json!("https://example.com/x"),
            query: json!({}),
            headers: json!({}),
            body: json!({"n": 1}),
            secrets: vec![SecretString {
                path: vec![PathSeg::Key("headers".into()), PathSeg::Key("auth".into())],
                parts: vec![
                    SecretPart::Text("Bearer ".into()),
                    SecretPart::Secret("TOKEN".into()),
                ],
            }],
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["step_type"], "http");
        assert_eq!(
            v["request"]["secrets"][0],
            json!({"path": ["headers", "auth"], "parts": [{"text": "Bearer "}, {"secret": "TOKEN"}]})
        );
        assert_eq!(serde_json::from_value::<StepRequest>(v).unwrap(), r);
        assert_eq!(r.step_type(), "http");
    }
}
