//! The `http` step: one HTTP request per attempt.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::redirect::Policy;
use reqwest::{Method, Url};
use serde_json::{Map as JsonMap, Value, json};

use super::egress::{EgressDenied, EgressPolicy, GuardedResolver};
use crate::domain::StepError;
use crate::ports::{SecretStore, StepCall, StepExecutor};
use crate::secret_refs;

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 5 * 1024 * 1024;
const MAX_REDIRECTS: usize = 10;

pub struct HttpExecutor {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    secrets: Arc<dyn SecretStore>,
}

/// An HTTP client whose every connection passes the egress policy: host
/// names through the guarded resolver, redirects through `check_url`. (IP
/// literals skip DNS, so callers check the first URL with `check_url`.)
pub fn guarded_client(policy: &Arc<EgressPolicy>) -> anyhow::Result<reqwest::Client> {
    let redirect_policy = Arc::clone(policy);
    Ok(reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: Arc::clone(policy),
        }))
        .redirect(Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(EgressDenied(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match check_url(attempt.url(), &redirect_policy) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    let msg = format!("redirect to {} refused: {}", attempt.url(), e.0);
                    attempt.error(EgressDenied(msg))
                }
            }
        }))
        .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

impl HttpExecutor {
    pub fn new(policy: EgressPolicy, secrets: Arc<dyn SecretStore>) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        Ok(Self {
            client: guarded_client(&policy)?,
            policy,
            secrets,
        })
    }
}

/// Scheme and IP-literal checks (host names are checked when resolved).
pub fn check_url(url: &Url, policy: &EgressPolicy) -> Result<(), EgressDenied> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(EgressDenied(format!(
            "`{}` URLs are not allowed; use http or https",
            url.scheme()
        )));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(d)) => d.parse::<IpAddr>().ok(),
        None => return Err(EgressDenied("the URL has no host".into())),
    };
    match literal {
        Some(ip) => policy.check(ip),
        None => Ok(()),
    }
}

fn denied(e: EgressDenied) -> StepError {
    StepError::permanent("egress_denied", e.0)
}

fn bad_request(msg: impl Into<String>) -> StepError {
    StepError::permanent("invalid_request", msg)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn object(v: Option<&Value>, what: &str) -> Result<JsonMap<String, Value>, StepError> {
    match v {
        None | Some(Value::Null) => Ok(JsonMap::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(bad_request(format!(
            "`{what}` must be an object, got {other}"
        ))),
    }
}

/// Finds an `EgressDenied` anywhere in an error's chain of causes.
pub fn egress_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<EgressDenied>() {
            return Some(d.0.clone());
        }
        cur = err.source();
    }
    None
}

pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<f64> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Some(secs.max(0.0));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        ((at.with_timezone(&Utc) - Utc::now())
            .num_milliseconds()
            .max(0) as f64)
            / 1000.0,
    )
}

#[async_trait]
impl StepExecutor for HttpExecutor {
    async fn execute(&self, call: &StepCall) -> Result<Value, StepError> {
        let mut request = call.request.clone();
        let values =
            secret_refs::resolve(self.secrets.as_ref(), &call.workspace_id, &mut request).await?;
        match self.send(call, &request).await {
            Ok(mut out) => {
                secret_refs::redact(&mut out, &values);
                Ok(out)
            }
            Err(mut e) => {
                e.message = secret_refs::redact_str(&e.message, &values);
                Err(e)
            }
        }
    }
}

impl HttpExecutor {
    async fn send(&self, call: &StepCall, req: &Value) -> Result<Value, StepError> {
        let method = Method::from_bytes(req["method"].as_str().unwrap_or("GET").as_bytes())
            .map_err(|_| bad_request("invalid HTTP method"))?;
        let url_text = as_text(&req["url"]);
        let mut url = Url::parse(&url_text)
            .map_err(|e| bad_request(format!("`{url_text}` is not a valid URL: {e}")))?;
        check_url(&url, &self.policy).map_err(denied)?;
        {
            let query = object(req.get("query"), "query")?;
            if !query.is_empty() {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in &query {
                    pairs.append_pair(k, &as_text(v));
                }
            }
        }
        let mut builder = self.client.request(method, url).timeout(call.timeout);
        for (k, v) in object(req.get("headers"), "headers")? {
            builder = builder.header(k.as_str(), as_text(&v));
        }
        builder = match req.get("body") {
            None | Some(Value::Null) => builder,
            Some(Value::String(s)) => builder.body(s.clone()),
            Some(other) => builder.json(other),
        };
        let started = std::time::Instant::now();
        let mut res = builder.send().await.map_err(|e| {
            if let Some(why) = egress_cause(&e) {
                StepError::permanent("egress_denied", why)
            } else if e.is_timeout() {
                StepError::transient(
                    "timeout",
                    format!(
                        "no response within {}",
                        humantime::format_duration(call.timeout)
                    ),
                )
            } else if e.is_builder() {
                bad_request(format!("the request could not be built: {e}"))
            } else if e.is_connect() {
                StepError::transient("connection_error", format!("could not connect: {e}"))
            } else {
                StepError::transient("request_failed", format!("the request failed: {e}"))
            }
        })?;
        let status = res.status();
        let headers: JsonMap<String, Value> = res
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let wait = retry_after(res.headers());
        let is_json = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let mut bytes = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(StepError::permanent(
                            "response_too_large",
                            format!("the response body is larger than {MAX_RESPONSE_BYTES} bytes"),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(StepError::transient(
                        "timeout",
                        "the response body did not arrive in time",
                    ));
                }
                Err(e) => {
                    return Err(StepError::transient(
                        "request_failed",
                        format!("reading the response failed: {e}"),
                    ));
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if is_json {
            serde_json::from_slice(&bytes).unwrap_or(Value::String(text.clone()))
        } else {
            Value::String(text.clone())
        };
        let code = status.as_u16();
        if status.is_success() {
            return Ok(json!({
                "status": code,
                "headers": headers,
                "body": body,
                "duration_ms": started.elapsed().as_millis() as u64,
            }));
        }
        let snippet: String = text.chars().take(300).collect();
        let message = format!(
            "HTTP {code} {}: {snippet}",
            status.canonical_reason().unwrap_or("")
        );
        if code == 429 || status.is_server_error() {
            let mut e = StepError::transient(&format!("http_{code}"), message);
            e.retry_after_secs = wait;
            Err(e)
        } else {
            Err(StepError::permanent(&format!("http_{code}"), message))
        }
    }
}
