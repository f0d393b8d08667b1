//! The `llm` step: one model call per attempt, moving along the fallback
//! chain on rate limits, server errors, timeouts and too-long contexts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde_json::{Value, json};

use super::providers::{self, CallError, ErrorClass, Kind, Prompt, Reply};
use super::{prices, spend};
use crate::adapters::http::retry_after;
use crate::domain::{
    Caps, Charge, StepError, TokenPrice, Usage, Usd, WorkspaceId, WorkspaceSettings,
};
use crate::ports::{
    LlmRequest, ResultCache, SecretStore, SettingsStore, StepCall, StepExecutor, StepRequest,
    UsageStore,
};
use crate::step_secrets::Redactor;

/// Largest reply read from a model provider.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

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
    /// Providers the operator adds, each an OpenAI-compatible endpoint (its
    /// base URL in `base_urls`). Their key is optional: Ollama needs none.
    pub compatible: Vec<String>,
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
            compatible: Vec::new(),
        }
    }
}

impl LlmConfig {
    /// The defaults, changed by `WEFT_LLM_DEFAULT_PROVIDER`,
    /// `WEFT_<PROVIDER>_BASE_URL` and `WEFT_<PROVIDER>_API_KEY` (provider:
    /// OPENAI, ANTHROPIC, GEMINI, or one added), and
    /// `WEFT_LLM_PROVIDERS=name=url,...`, which adds OpenAI-compatible
    /// providers (Groq, Ollama, vLLM, ...) under names of their own.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut c = Self::default();
        if let Ok(p) = std::env::var("WEFT_LLM_DEFAULT_PROVIDER")
            && !p.trim().is_empty()
        {
            c.default_provider = p.trim().to_owned();
        }
        if let Ok(list) = std::env::var("WEFT_LLM_PROVIDERS") {
            c.add_compatible(&list)?;
        }
        let names: Vec<String> = c.base_urls.keys().cloned().collect();
        for provider in names {
            let up = env_name(&provider);
            if let Ok(url) = std::env::var(format!("WEFT_{up}_BASE_URL")) {
                c.base_urls.insert(provider.clone(), url);
            }
            if let Ok(key) = std::env::var(format!("WEFT_{up}_API_KEY")) {
                c.operator_keys.insert(provider, key);
            }
        }
        Ok(c)
    }

    /// Adds OpenAI-compatible providers from `name=base-url,...`.
    pub fn add_compatible(&mut self, list: &str) -> anyhow::Result<()> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("WEFT_LLM_PROVIDERS: `{entry}` should be name=base-url")
            })?;
            let (name, url) = (name.trim(), url.trim());
            if !crate::dsl::is_provider_name(name) {
                anyhow::bail!(
                    "WEFT_LLM_PROVIDERS: `{name}` is not a provider name (lowercase letters, digits, `_`, `-`)"
                );
            }
            if crate::dsl::LLM_PROVIDERS.contains(&name) {
                anyhow::bail!(
                    "WEFT_LLM_PROVIDERS: `{name}` is built in; set WEFT_{}_BASE_URL to move it",
                    env_name(name)
                );
            }
            Url::parse(url)
                .map_err(|e| anyhow::anyhow!("WEFT_LLM_PROVIDERS: `{url}` is not a URL: {e}"))?;
            self.base_urls.insert(name.to_owned(), url.to_owned());
            self.compatible.push(name.to_owned());
        }
        Ok(())
    }

    fn kind(&self, provider: &str) -> Option<Kind> {
        match provider {
            "openai" => Some(Kind::OpenAi),
            "anthropic" => Some(Kind::Anthropic),
            "gemini" => Some(Kind::Gemini),
            p if self.compatible.iter().any(|c| c == p) => Some(Kind::OpenAi),
            _ => None,
        }
    }

    /// Every provider a step may name.
    pub fn providers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.base_urls.keys().cloned().collect();
        v.sort();
        v
    }
}

fn env_name(provider: &str) -> String {
    provider.to_uppercase().replace('-', "_")
}

/// The workspace secret holding a provider's key.
pub fn key_secret_name(provider: &str) -> String {
    format!("{}_API_KEY", env_name(provider))
}

/// Where spending is checked and recorded.
#[derive(Clone)]
pub struct Spending {
    pub settings: Arc<dyn SettingsStore>,
    pub usage: Arc<dyn UsageStore>,
    pub cache: Arc<dyn ResultCache>,
}

impl Spending {
    pub fn from_stores(s: &crate::ports::StoreSet) -> Self {
        Self {
            settings: s.settings.clone(),
            usage: s.usage.clone(),
            cache: s.cache.clone(),
        }
    }
}

/// Calls providers at the base URLs the operator configured. Those are
/// trusted by configuration, so they are not held to the egress policy for
/// tenants' http steps (a local model server on 127.0.0.1 does not open
/// loopback to every tenant); nothing a tenant writes chooses the host.
pub struct LlmExecutor {
    client: reqwest::Client,
    secrets: Arc<dyn SecretStore>,
    config: LlmConfig,
    spending: Spending,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::transient("store_unavailable", format!("{what}: {e}"))
}

impl LlmExecutor {
    pub fn new(
        secrets: Arc<dyn SecretStore>,
        config: LlmConfig,
        spending: Spending,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
                .build()?,
            secrets,
            config,
            spending,
        })
    }

    async fn api_key(&self, ws: &WorkspaceId, provider: &str) -> Result<Option<String>, CallError> {
        let name = key_secret_name(provider);
        match self.secrets.get_secret(ws, &name).await {
            Ok(Some(k)) => return Ok(Some(k)),
            Ok(None) => {}
            Err(e) => {
                return Err(CallError {
                    class: ErrorClass::ServerError,
                    message: format!("secrets could not be read: {e}"),
                    retry_after: None,
                });
            }
        }
        if let Some(k) = self.config.operator_keys.get(provider) {
            return Ok(Some(k.clone()));
        }
        if self.config.compatible.iter().any(|c| c == provider) {
            return Ok(None);
        }
        Err(CallError {
            class: ErrorClass::Auth,
            message: format!(
                "no API key for {provider}: set the workspace secret {name} (PUT /v1/secrets/{name})"
            ),
            retry_after: None,
        })
    }

    async fn call(
        &self,
        ws: &WorkspaceId,
        provider: &str,
        prompt: &Prompt<'_>,
        timeout: Duration,
        memory: &crate::memory::Hold,
    ) -> Result<Reply, CallError> {
        let fail = |class, message: String| CallError {
            class,
            message,
            retry_after: None,
        };
        let kind = self.config.kind(provider).ok_or_else(|| {
            fail(
                ErrorClass::Invalid,
                format!(
                    "provider `{provider}` is not configured on this server (it has: {})",
                    self.config.providers().join(", ")
                ),
            )
        })?;
        let base = self.config.base_urls.get(provider).ok_or_else(|| {
            fail(
                ErrorClass::Invalid,
                format!("provider `{provider}` has no base URL configured"),
            )
        })?;
        let key = self.api_key(ws, provider).await?;
        // The key must not come back in anything recorded (some providers
        // quote the key they were sent in their error messages).
        let redactor = Redactor::new(key.clone());
        let (path, body) = providers::request(kind, prompt);
        let url = providers::endpoint(base, &path).map_err(|e| {
            fail(
                ErrorClass::Invalid,
                format!("bad base URL for {provider}: {e}"),
            )
        })?;
        let mut req = self.client.post(url).timeout(timeout).json(&body);
        req = match (kind, key) {
            (_, None) => req,
            (Kind::OpenAi, Some(key)) => req.bearer_auth(key),
            (Kind::Anthropic, Some(key)) => req
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01"),
            (Kind::Gemini, Some(key)) => req.header("x-goog-api-key", key),
        };
        let res = req.send().await.map_err(|e| {
            let e = e.without_url();
            if e.is_timeout() {
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
        // Read within a bound and counted (`memory::Hold`), like an http
        // step's response: a provider is outside and may send anything.
        let mut res = res;
        let mut bytes = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
                        return Err(fail(
                            ErrorClass::ServerError,
                            format!("the reply is larger than {MAX_REPLY_BYTES} bytes"),
                        ));
                    }
                    memory
                        .charge(chunk.len() as u64)
                        .await
                        .map_err(|e| fail(ErrorClass::Invalid, e.message))?;
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(fail(
                        ErrorClass::Timeout,
                        "the reply did not arrive in time".into(),
                    ));
                }
                Err(e) => {
                    return Err(fail(
                        ErrorClass::ServerError,
                        format!("reading the reply failed: {}", e.without_url()),
                    ));
                }
            }
        }
        let raw = redactor.redact_str(&String::from_utf8_lossy(&bytes));
        drop(bytes);
        let parsed: Value = match crate::memory::parse_cost(raw.as_bytes()) {
            Some(c) if c > crate::domain::limits::MAX_STEP_OUTPUT_MEMORY => {
                return Err(fail(
                    ErrorClass::ServerError,
                    format!(
                        "the reply would take {} MiB in memory once parsed",
                        c / (1024 * 1024)
                    ),
                ));
            }
            Some(c) => {
                memory
                    .charge(c)
                    .await
                    .map_err(|e| fail(ErrorClass::Invalid, e.message))?;
                serde_json::from_str(&raw).unwrap_or(Value::Null)
            }
            None => Value::Null,
        };
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
            message: redactor.redact_str(&message),
            retry_after: wait,
        })
    }
}

#[async_trait]
impl StepExecutor for LlmExecutor {
    async fn execute(&self, call: &StepCall) -> Result<Value, StepError> {
        let ws = &call.workspace_id;
        // Model calls never carry secret slots: a definition cannot insert
        // secrets into an llm step, and the provider's key is added by
        // `call` from the workspace's own settings.
        let StepRequest::Llm(req) = &call.request else {
            return Err(StepError::permanent(
                "invalid_request",
                "not a model call's request",
            ));
        };
        let cache = req
            .cache_ttl_secs
            .map(|ttl| (spend::cache_key(req), Duration::from_secs(ttl)));
        if let Some((key, _)) = &cache
            && let Some(hit) = self.cache_hit(call, key, &req.inputs).await?
        {
            return Ok(hit);
        }
        // Prices and the monthly cap: only a real call needs them.
        let settings = self
            .spending
            .settings
            .get_settings(ws)
            .await
            .map_err(|e| unavailable("the workspace settings could not be read", e))?;
        let result = self.run_chain(call, req, &settings).await;
        if let (Some((key, ttl)), Ok(out)) = (&cache, &result) {
            let mut stored = out.clone();
            if let Some(o) = stored.as_object_mut() {
                o.remove("inputs");
            }
            let until = chrono::Utc::now()
                + chrono::Duration::from_std(*ttl).unwrap_or(chrono::Duration::days(30));
            if let Err(e) = self
                .spending
                .cache
                .put_cached(ws, key, &stored, until)
                .await
            {
                tracing::warn!(error = %e, "the result could not be cached");
            }
        }
        result
    }
}

impl LlmExecutor {
    /// The stored output of an identical call, marked as a hit with the
    /// cost it saved (and charged as a free call).
    async fn cache_hit(
        &self,
        call: &StepCall,
        key: &str,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let now = chrono::Utc::now();
        let found = self
            .spending
            .cache
            .cached(&call.workspace_id, key, now)
            .await
            .map_err(|e| unavailable("the result cache could not be read", e))?;
        let Some(mut out) = found else {
            return Ok(None);
        };
        let saved = out["cost_usd"]
            .as_f64()
            .and_then(Usd::from_dollars)
            .unwrap_or_default();
        out["cached"] = json!(true);
        out["cost_saved_usd"] = json!(saved);
        out["cost_usd"] = json!(0.0);
        if !inputs.is_null() {
            out["inputs"] = inputs.clone();
        }
        let charge = self.charge(
            call,
            0,
            out["provider"].as_str().unwrap_or_default(),
            out["model"].as_str().unwrap_or_default(),
        );
        let used = Usage {
            calls: 1,
            cost_saved_usd: saved,
            cache_hits: 1,
            ..Usage::default()
        };
        self.spending
            .usage
            .settle(&charge, &used)
            .await
            .map_err(|e| unavailable("the usage ledger could not be written", e))?;
        Ok(Some(out))
    }

    fn charge(&self, call: &StepCall, try_index: u32, provider: &str, model: &str) -> Charge {
        Charge {
            workspace_id: call.workspace_id.clone(),
            run_id: call.run_id.clone(),
            workflow_id: call.workflow_id.clone(),
            step_key: call.step_key.clone(),
            attempt: call.attempt,
            try_index,
            provider: provider.to_owned(),
            model: model.to_owned(),
            at: chrono::Utc::now(),
        }
    }

    async fn run_chain(
        &self,
        call: &StepCall,
        req: &LlmRequest,
        settings: &WorkspaceSettings,
    ) -> Result<Value, StepError> {
        let default = self.config.default_provider.as_str();
        let first_provider = req.provider.as_deref().unwrap_or(default);
        let first_model = match &req.retry_model {
            Some(cheaper) if call.attempt > 1 => cheaper,
            _ => &req.model,
        };
        let mut chain = vec![(first_provider, first_model.as_str())];
        for f in &req.fallback {
            chain.push((f.provider.as_deref().unwrap_or(default), f.model.as_str()));
        }
        let messages = &req.messages;
        let system = req.system.as_deref();
        let max_tokens = req.max_tokens;
        let estimate = spend::estimated_input_tokens(system, messages);
        let caps = Caps {
            run_usd: call.budget_usd,
            month_usd: settings.monthly_budget_usd,
        };
        let per_call = (call.timeout / chain.len() as u32).max(Duration::from_secs(1));
        let mut tries = Vec::new();
        let mut last: Option<CallError> = None;
        for (i, (provider, model)) in chain.iter().enumerate() {
            let price = prices::price_with(model, &settings.prices);
            let worst = spend::worst_case_usd(price, estimate, max_tokens);
            let charge = self.charge(call, i as u32, provider, model);
            let reserved = self
                .spending
                .usage
                .reserve(&charge, worst, &caps)
                .await
                .map_err(|e| unavailable("the usage ledger could not be written", e))?;
            if let Err(hit) = reserved {
                return Err(spend::refusal(&hit, worst, provider, model, max_tokens));
            }
            let prompt = Prompt {
                model,
                system,
                messages,
                temperature: req.temperature,
                max_tokens,
                json: req.json,
            };
            let result = self
                .call(
                    &call.workspace_id,
                    provider,
                    &prompt,
                    per_call,
                    &call.memory,
                )
                .await;
            let used = match &result {
                Ok(r) => Usage {
                    calls: 1,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_usd: prices::cost_with(price, r.input_tokens, r.output_tokens)
                        .unwrap_or_default(),
                    ..Usage::default()
                },
                Err(_) => Usage {
                    calls: 1,
                    ..Usage::default()
                },
            };
            if let Err(e) = self.spending.usage.settle(&charge, &used).await {
                // The reservation stays at the worst case: spending is
                // overstated, never understated.
                tracing::warn!(error = %e, "settling a model call's cost failed");
            }
            match result {
                Ok(reply) => {
                    tries.push(json!({"provider": provider, "model": model}));
                    return output(
                        provider,
                        model,
                        reply,
                        prompt.json,
                        tries,
                        &req.inputs,
                        price,
                    );
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
    price: Option<TokenPrice>,
) -> Result<Value, StepError> {
    let mut out = json!({
        "response": reply.text,
        "provider": provider,
        "model": model,
        "finish_reason": reply.finish_reason,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        "cost_usd": prices::cost_with(price, reply.input_tokens, reply.output_tokens),
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
