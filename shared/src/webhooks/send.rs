//! Sends one attempt of a delivery: a POST of the body with the Standard
//! Webhooks headers, through the egress guard (an endpoint's URL is the
//! tenant's choice: it may not reach internal addresses), no redirects
//! followed, at most `TIMEOUT`; the start of the answer is kept. 2xx is success; 410 Gone disables the
//! endpoint; anything else is tried again later.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::adapters::http::{EgressPolicy, check_url, egress_cause, guarded_client, retry_after};
use crate::domain::webhook::ANSWER_KEPT_BYTES;

/// Longest an endpoint may take to answer, its body read whole.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// Most of an answer's body read (and then dropped).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Accepted(u16),
    /// 410: the endpoint says it is gone for good.
    Gone,
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<f64>,
    },
}

pub struct Sender {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl Sender {
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        Ok(Self {
            client: guarded_client(&policy)?,
            policy,
        })
    }

    /// The endpoint URL, if deliveries may be sent to it (http or https;
    /// an IP literal must pass the egress policy; a host name is checked
    /// each time it is resolved).
    pub fn check_url(&self, text: &str) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
        check_url(&url, &self.policy).map_err(|e| e.0)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL may not carry a user name or password".into());
        }
        Ok(url)
    }

    /// One attempt: what it came to, and the start of the answer's body
    /// (lossy UTF-8, at most `ANSWER_KEPT_BYTES`).
    pub async fn send(
        &self,
        url: &str,
        id: &str,
        timestamp: i64,
        signature: &str,
        body: &str,
    ) -> (Outcome, Option<String>) {
        let url = match self.check_url(url) {
            Ok(u) => u,
            Err(error) => {
                let failed = Outcome::Failed {
                    status: None,
                    error,
                    retry_after: None,
                };
                return (failed, None);
            }
        };
        let sent = self
            .client
            .post(url)
            .timeout(TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        let mut res = match sent {
            Ok(r) => r,
            Err(e) => {
                let error = match egress_cause(&e) {
                    // What a name resolves to inside is not the tenant's
                    // to learn.
                    Some(why) => {
                        tracing::info!(reason = %why, "a webhook delivery's address is not allowed");
                        "the endpoint's address is not allowed (an internal address)".into()
                    }
                    None if e.is_timeout() => format!("no answer within {} s", TIMEOUT.as_secs()),
                    None if e.is_connect() => "could not connect".into(),
                    None => "the request failed".into(),
                };
                let failed = Outcome::Failed {
                    status: None,
                    error,
                    retry_after: None,
                };
                return (failed, None);
            }
        };
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        // The answer is read (so the connection can be reused); its start
        // is kept. One cut off, or not read whole in time, is no answer.
        let mut read = 0;
        let mut kept = Vec::new();
        let whole = loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = ANSWER_KEPT_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    // Past this much the rest is not read (nor waited for).
                    if read > MAX_ANSWER_BYTES {
                        break true;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        let response = (!kept.is_empty()).then(|| kept_text(&kept));
        if !whole {
            let failed = Outcome::Failed {
                status: Some(status),
                error: format!(
                    "answered {status} but the answer was cut off or not read whole within {} s",
                    TIMEOUT.as_secs()
                ),
                retry_after: after,
            };
            return (failed, response);
        }
        let outcome = match status {
            200..=299 => Outcome::Accepted(status),
            410 => Outcome::Gone,
            _ => Outcome::Failed {
                status: Some(status),
                error: format!("answered {status}"),
                retry_after: after,
            },
        };
        (outcome, response)
    }
}

/// The kept start of an answer as text: invalid UTF-8 replaced, then cut
/// (at a character) to `ANSWER_KEPT_BYTES`.
fn kept_text(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if text.len() > ANSWER_KEPT_BYTES {
        let mut end = ANSWER_KEPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_text_is_at_most_the_bound_in_bytes() {
        let invalid = vec![0xFFu8; 5000];
        let t = kept_text(&invalid[..ANSWER_KEPT_BYTES]);
        assert!(t.len() <= ANSWER_KEPT_BYTES, "{}", t.len());
        let two_byte = "é".repeat(600);
        let t = kept_text(&two_byte.as_bytes()[..ANSWER_KEPT_BYTES + 1]);
        assert!(t.len() <= ANSWER_KEPT_BYTES && t.chars().all(|c| c == 'é' || c == '\u{FFFD}'));
        assert_eq!(kept_text(b"ok"), "ok");
    }
}
