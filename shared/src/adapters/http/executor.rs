//! The `http` step: one HTTP request per attempt.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::Policy;
use reqwest::{Method, Url};
use serde_json::{Map as JsonMap, Value, json};

use super::egress::{EgressDenied, EgressPolicy, GuardedResolver};
use crate::domain::StepError;
use crate::domain::limits::MAX_STEP_OUTPUT_MEMORY;
use crate::ports::{HttpRequest, SecretStore, StepCall, StepExecutor, StepRequest};
use crate::step_secrets::{self, Filled};

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024 - 16 * 1024;
const MAX_REDIRECTS: usize = 10;

pub struct HttpExecutor {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    secrets: Arc<dyn SecretStore>,
    /// Where each secret a call reads is recorded (by name).
    audit: Option<Arc<dyn crate::ports::AuditStore>>,
}

/// An HTTP client for tenant-chosen URLs: every connection passes the
/// egress policy (host names through the guarded resolver; callers check
/// IP literals and each redirect with `check_url`), redirects are not
/// followed by the client (the caller follows them, see `send`), and no
/// proxy from the environment is used (a proxy would resolve names past
/// the guard).
pub fn guarded_client(policy: &Arc<EgressPolicy>) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: Arc::clone(policy),
        }))
        .redirect(Policy::none())
        .no_proxy()
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
            audit: None,
        })
    }

    /// Records each secret a call reads in the workspace's audit log.
    pub fn with_audit(mut self, audit: Arc<dyn crate::ports::AuditStore>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// One audit entry per secret the call read (a failed write is logged:
    /// the call goes on).
    async fn record_reads(&self, call: &StepCall, names: &[String]) {
        let Some(audit) = &self.audit else { return };
        for name in names {
            let e = crate::domain::AuditEntry::new(
                &call.workspace_id,
                format!("run:{}/{}", call.run_id, call.step_key),
                "secret.read".into(),
                format!("/v1/secrets/{name}"),
            );
            if let Err(err) = audit.append_audit(&e).await {
                tracing::warn!(error = %err, "recording a secret's read failed");
            }
        }
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

fn object(v: &Value, what: &str) -> Result<JsonMap<String, Value>, StepError> {
    match v {
        Value::Null => Ok(JsonMap::new()),
        Value::Object(m) => Ok(m.clone()),
        other => Err(bad_request(format!(
            "`{what}` must be an object, got {}",
            crate::engine::steps::short_json(other)
        ))),
    }
}

/// Headers the client sets itself: a step setting them could reach another
/// virtual host than its URL names, or desynchronise the connection.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// Headers dropped when a redirect leads to another origin, besides those
/// that carry the step's secrets.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

fn headers(req: &HttpRequest) -> Result<HeaderMap, StepError> {
    let mut out = HeaderMap::new();
    for (k, v) in object(&req.headers, "headers")? {
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(bad_request(format!(
                "the header `{k}` is set by Weft, not by a step"
            )));
        }
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| bad_request(format!("`{k}` is not a valid header name")))?;
        let value = HeaderValue::from_str(&as_text(&v))
            .map_err(|_| bad_request(format!("the value of header `{k}` is not valid")))?;
        out.append(name, value);
    }
    Ok(out)
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
        let StepRequest::Http(request) = &call.request else {
            return Err(bad_request("not an http request"));
        };
        let mut request = request.clone();
        let filled =
            step_secrets::fill(self.secrets.as_ref(), &call.workspace_id, &mut request).await?;
        self.record_reads(call, &filled.names).await;
        match self.send(call, &request, &filled).await {
            Ok(mut out) => {
                filled.redactor.redact(&mut out);
                Ok(out)
            }
            Err(mut e) => {
                e.message = filled.redactor.redact_str(&e.message);
                Err(e)
            }
        }
    }
}

/// An error of the client, without the URL (which may hold a secret).
fn client_error(e: reqwest::Error, timeout: std::time::Duration) -> StepError {
    if let Some(why) = egress_cause(&e) {
        return StepError::permanent("egress_denied", why);
    }
    let e = e.without_url();
    if e.is_timeout() {
        StepError::transient(
            "timeout",
            format!("no response within {}", humantime::format_duration(timeout)),
        )
    } else if e.is_builder() {
        bad_request(format!("the request could not be built: {e}"))
    } else if e.is_connect() {
        StepError::transient("connection_error", format!("could not connect: {e}"))
    } else {
        StepError::transient("request_failed", format!("the request failed: {e}"))
    }
}

impl HttpExecutor {
    async fn send(
        &self,
        call: &StepCall,
        req: &HttpRequest,
        filled: &Filled,
    ) -> Result<Value, StepError> {
        let mut method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| bad_request("invalid HTTP method"))?;
        let url_text = as_text(&req.url);
        let mut url = Url::parse(&url_text)
            .map_err(|e| bad_request(format!("`{url_text}` is not a valid URL: {e}")))?;
        check_url(&url, &self.policy).map_err(denied)?;
        {
            let query = object(&req.query, "query")?;
            if !query.is_empty() {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in &query {
                    pairs.append_pair(k, &as_text(v));
                }
            }
        }
        let mut headers = headers(req)?;
        let mut body: Option<(Vec<u8>, bool)> = match &req.body {
            Value::Null => None,
            Value::String(s) => Some((s.clone().into_bytes(), false)),
            other => Some((
                serde_json::to_vec(other).map_err(|e| bad_request(e.to_string()))?,
                true,
            )),
        };
        let deadline = tokio::time::Instant::now() + call.timeout;
        let started = std::time::Instant::now();
        let mut redirects = 0;
        let mut res = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut builder = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(left.max(std::time::Duration::from_millis(1)));
            if let Some((bytes, json)) = &body {
                if *json && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
                    builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
                }
                builder = builder.body(bytes.clone());
            }
            let res = builder
                .send()
                .await
                .map_err(|e| client_error(e, call.timeout))?;
            let status = res.status().as_u16();
            let location = res
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok());
            let (true, Some(location)) = (matches!(status, 301 | 302 | 303 | 307 | 308), location)
            else {
                break res;
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(denied(EgressDenied(format!(
                    "more than {MAX_REDIRECTS} redirects"
                ))));
            }
            let next = url.join(location).map_err(|_| {
                bad_request(format!("the redirect to `{location}` is not a valid URL"))
            })?;
            check_url(&next, &self.policy).map_err(|e| {
                denied(EgressDenied(format!("redirect to {next} refused: {}", e.0)))
            })?;
            if status == 303 || (matches!(status, 301 | 302) && method == Method::POST) {
                method = if method == Method::HEAD {
                    Method::HEAD
                } else {
                    Method::GET
                };
                body = None;
                headers.remove(reqwest::header::CONTENT_TYPE);
            }
            if next.origin() != url.origin() {
                for h in CREDENTIAL_HEADERS
                    .iter()
                    .copied()
                    .chain(filled.headers.iter().map(String::as_str))
                {
                    headers.remove(h);
                }
                if body.is_some() && filled.in_body {
                    return Err(StepError::permanent(
                        "redirect_refused",
                        format!(
                            "the response redirects to another host ({}), which would be sent a body that holds secrets",
                            next.host_str().unwrap_or("?")
                        ),
                    ));
                }
            }
            url = next;
        };
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
                    // Counted before it is kept: what many attempts hold
                    // at once is bounded (`memory::Hold`).
                    call.memory.charge(chunk.len() as u64).await?;
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
                        format!("reading the response failed: {}", e.without_url()),
                    ));
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // JSON is parsed only if what it takes parsed is within bounds
        // (dense JSON takes many times its text); else it is refused.
        let cost = is_json.then(|| crate::memory::parse_cost(&bytes)).flatten();
        let body = match cost {
            Some(c) if c > MAX_STEP_OUTPUT_MEMORY => {
                return Err(StepError::permanent(
                    "response_too_large",
                    format!(
                        "the response's JSON would take {} MiB in memory once parsed; a step's output may take {} MiB",
                        c / (1024 * 1024),
                        MAX_STEP_OUTPUT_MEMORY / (1024 * 1024)
                    ),
                ));
            }
            Some(c) => {
                call.memory.charge(c).await?;
                serde_json::from_slice(&bytes).unwrap_or(Value::String(text.clone()))
            }
            None => Value::String(text.clone()),
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
        // Redacted before it is cut: a secret across the cut would
        // otherwise leave its first half.
        let snippet: String = filled
            .redactor
            .redact_str(&text)
            .chars()
            .take(300)
            .collect();
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
