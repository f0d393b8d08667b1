//! The `llm` step: one model call per attempt, moving along the fallback
//! chain on rate limits, server errors, timeouts and too-long contexts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde_json::{Value, json};

use super::prices;
use super::providers::{self, CallError, ErrorClass, Kind, Prompt, Reply};
use crate::adapters::http::{EgressPolicy, check_url, egress_cause, guarded_client, retry_after};
use crate::domain::{StepError, WorkspaceId};
use crate::ports::{SecretStore, StepCall, StepExecutor};
use crate::secret_refs;

/// Where each provider is reached and which provider a step without one uses.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    pub default_provider: String,
    /// Base URL by provider name; an OpenAI-compatible server (Groq, Ollama,
    /// vLLM, …) is used by pointing `openai` at it.
    pub base_urls: HashMap<String, String>,
    /// Keys the operator provides for every workspace, by provider name. A
    /// workspace's own secret (`OPENAI_API_KEY`, …) takes precedence.
    pub operator_keys: HashMap<String, String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            default_provider: "openai".into(),
            base_urls: HashMap::from([
                ("openai".into(), "https://api.openai.com/v1".into()),
                ("anthropic".into(), "https://api.anthropic.com".into()),
                (
                    "gemini".into(),
                    "https://generativelanguage.googleapis.com".into(),
                ),
            ]),
            operator_keys: HashMap::new(),
        }
    }
}

impl LlmConfig {
    /// The defaults, changed by `WEFT_LLM_DEFAULT_PROVIDER`,
    /// `WEFT_<PROVIDER>_BASE_URL` and `WEFT_<PROVIDER>_API_KEY` (provider:
    /// OPENAI, ANTHROPIC, GEMINI).
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Ok(p) = std::env::var("WEFT_LLM_DEFAULT_PROVIDER")
            && !p.trim().is_empty()
        {
            c.default_provider = p.trim().to_owned();
        }
        for provider in ["openai", "anthropic", "gemini"] {
            let up = provider.to_uppercase();
            if let Ok(url) = std::env::var(format!("WEFT_{up}_BASE_URL")) {
                c.base_urls.insert(provider.into(), url);
            }
            if let Ok(key) = std::env::var(format!("WEFT_{up}_API_KEY")) {
                c.operator_keys.insert(provider.into(), key);
            }
        }
        c
    }
}

fn kind(provider: &str) -> Option<Kind> {
    match provider {
        "openai" => Some(Kind::OpenAi),
        "anthropic" => Some(Kind::Anthropic),
        "gemini" => Some(Kind::Gemini),
        _ => None,
    }
}

/// The workspace secret holding a provider's key.
pub fn key_secret_name(provider: &str) -> String {
    format!("{}_API_KEY", provider.to_uppercase())
}

pub struct LlmExecutor {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    secrets: Arc<dyn SecretStore>,
    config: LlmConfig,
}

impl LlmExecutor {
    pub fn new(
        policy: EgressPolicy,
        secrets: Arc<dyn SecretStore>,
        config: LlmConfig,
    ) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        Ok(Self {
            client: guarded_client(&policy)?,
            policy,
            secrets,
            config,
        })
    }

    async fn api_key(&self, ws: &WorkspaceId, provider: &str) -> Result<String, CallError> {
        let name = key_secret_name(provider);
        match self.secrets.get_secret(ws, &name).await {
            Ok(Some(k)) => return Ok(k),
            Ok(None) => {}
            Err(e) => {
                return Err(CallError {
                    class: ErrorClass::ServerError,
                    message: format!("secrets could not be read: {e}"),
                    retry_after: None,
                });
            }
        }
        self.config.operator_keys.get(provider).cloned().ok_or_else(|| CallError {
            class: ErrorClass::Auth,
            message: format!("no API key for {provider}: set the workspace secret {name} (PUT /v1/secrets/{name})"),
            retry_after: None,
        })
    }

    async fn call(
        &self,
        ws: &WorkspaceId,
        provider: &str,
        prompt: &Prompt<'_>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let fail = |class, message: String| CallError {
            class,
            message,
            retry_after: None,
        };
        let kind = kind(provider).ok_or_else(|| {
            fail(
                ErrorClass::Invalid,
                format!("unknown provider `{provider}`"),
            )
        })?;
        let base = self.config.base_urls.get(provider).ok_or_else(|| {
            fail(
                ErrorClass::Invalid,
                format!("provider `{provider}` has no base URL configured"),
            )
        })?;
        let key = self.api_key(ws, provider).await?;
        let (path, body) = providers::request(kind, prompt);
        let url = Url::parse(&format!("{}{path}", base.trim_end_matches('/'))).map_err(|e| {
            fail(
                ErrorClass::Invalid,
                format!("bad base URL for {provider}: {e}"),
            )
        })?;
        check_url(&url, &self.policy).map_err(|e| fail(ErrorClass::EgressDenied, e.0))?;
        let mut req = self.client.post(url).timeout(timeout).json(&body);
        req = match kind {
            Kind::OpenAi => req.bearer_auth(&key),
            Kind::Anthropic => req
                .header("x-api-key", &key)
                .header("anthropic-version", "2023-06-01"),
            Kind::Gemini => req.header("x-goog-api-key", &key),
        };
        let res = req.send().await.map_err(|e| {
            if let Some(why) = egress_cause(&e) {
                fail(ErrorClass::EgressDenied, why)
            } else if e.is_timeout() {
                fail(
                    ErrorClass::Timeout,
                    format!("no reply within {}", humantime::format_duration(timeout)),
                )
            } else {
                fail(ErrorClass::ServerError, format!("the request failed: {e}"))
            }
        })?;
        let status = res.status().as_u16();
        let wait = retry_after(res.headers());
        let raw = res.text().await.map_err(|e| {
            if e.is_timeout() {
                fail(
                    ErrorClass::Timeout,
                    "the reply did not arrive in time".into(),
                )
            } else {
                fail(
                    ErrorClass::ServerError,
                    format!("reading the reply failed: {e}"),
                )
            }
        })?;
        let parsed: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return providers::reply(kind, &parsed).ok_or_else(|| {
                fail(
                    ErrorClass::ServerError,
                    format!(
                        "the reply had an unexpected shape: {}",
                        raw.chars().take(200).collect::<String>()
                    ),
                )
            });
        }
        let (class, message) = providers::error(status, &parsed, &raw);
        Err(CallError {
            class,
            message,
            retry_after: wait,
        })
    }
}

#[async_trait]
impl StepExecutor for LlmExecutor {
    async fn execute(&self, call: &StepCall) -> Result<Value, StepError> {
        let mut req = call.request.clone();
        let values =
            secret_refs::resolve(self.secrets.as_ref(), &call.workspace_id, &mut req).await?;
        let mut result = self.run_chain(call, &req).await;
        match &mut result {
            Ok(out) => secret_refs::redact(out, &values),
            Err(e) => e.message = secret_refs::redact_str(&e.message, &values),
        }
        result
    }
}

impl LlmExecutor {
    async fn run_chain(&self, call: &StepCall, req: &Value) -> Result<Value, StepError> {
        let default = self.config.default_provider.as_str();
        let first_provider = req["provider"].as_str().unwrap_or(default).to_owned();
        let mut first_model = req["model"].as_str().unwrap_or_default().to_owned();
        if call.attempt > 1
            && let Some(cheaper) = req["retry_model"].as_str()
        {
            first_model = cheaper.to_owned();
        }
        let mut chain = vec![(first_provider, first_model)];
        for f in req["fallback"].as_array().into_iter().flatten() {
            chain.push((
                f["provider"].as_str().unwrap_or(default).to_owned(),
                f["model"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        let system = req["system"].as_str();
        let per_call = (call.timeout / chain.len() as u32).max(Duration::from_secs(1));
        let mut tries = Vec::new();
        let mut last: Option<CallError> = None;
        for (provider, model) in &chain {
            let prompt = Prompt {
                model,
                system,
                messages: &messages,
                temperature: req["temperature"].as_f64(),
                max_tokens: req["max_tokens"].as_u64().unwrap_or(1024) as u32,
                json: req["json"].as_bool().unwrap_or(false),
            };
            match self
                .call(&call.workspace_id, provider, &prompt, per_call)
                .await
            {
                Ok(reply) => {
                    tries.push(json!({"provider": provider, "model": model}));
                    return output(provider, model, reply, prompt.json, tries, &req["inputs"]);
                }
                Err(e) => {
                    tries.push(json!({"provider": provider, "model": model, "error": {"code": e.class.code(), "message": e.message}}));
                    let next = e.class.falls_back();
                    last = Some(e);
                    if !next {
                        break;
                    }
                }
            }
        }
        let e = last.unwrap_or(CallError {
            class: ErrorClass::Invalid,
            message: "no model to call".into(),
            retry_after: None,
        });
        let summary: Vec<String> = tries
            .iter()
            .map(|t| {
                format!(
                    "{}/{}: {}",
                    t["provider"].as_str().unwrap_or(""),
                    t["model"].as_str().unwrap_or(""),
                    t["error"]["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        let mut err = if e.class.retryable() {
            StepError::transient(e.class.code(), summary.join("; "))
        } else {
            StepError::permanent(e.class.code(), summary.join("; "))
        };
        err.retry_after_secs = e.retry_after;
        Err(err)
    }
}

fn output(
    provider: &str,
    model: &str,
    reply: Reply,
    json_mode: bool,
    tries: Vec<Value>,
    inputs: &Value,
) -> Result<Value, StepError> {
    let mut out = json!({
        "response": reply.text,
        "provider": provider,
        "model": model,
        "finish_reason": reply.finish_reason,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        "cost_usd": prices::cost_usd(model, reply.input_tokens, reply.output_tokens),
        "tries": tries,
    });
    if json_mode {
        let parsed = crate::engine::steps::extract_json(&reply.text).ok_or_else(|| {
            StepError::permanent(
                "llm_invalid_json",
                format!(
                    "JSON output was asked for, but the reply holds none: {}",
                    reply.text.chars().take(200).collect::<String>()
                ),
            )
        })?;
        out["json"] = parsed;
    }
    if !inputs.is_null() {
        out["inputs"] = inputs.clone();
    }
    Ok(out)
}
