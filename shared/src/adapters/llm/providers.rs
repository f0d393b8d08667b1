//! The wire formats of the supported providers: building the request and
//! reading the reply or the error, as each provider documents them.

use serde_json::{Value, json};

/// What went wrong with one call, by what should happen next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ErrorClass {
    RateLimited,
    ServerError,
    Timeout,
    ContextTooLong,
    Auth,
    Invalid,
}

impl ErrorClass {
    /// Whether the next model in the fallback chain should be tried.
    pub fn falls_back(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::ServerError | Self::Timeout | Self::ContextTooLong
        )
    }

    /// Whether the step's retry policy may try again later.
    pub fn retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::ServerError | Self::Timeout)
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::RateLimited => "llm_rate_limited",
            Self::ServerError => "llm_server_error",
            Self::Timeout => "llm_timeout",
            Self::ContextTooLong => "llm_context_too_long",
            Self::Auth => "llm_auth",
            Self::Invalid => "llm_invalid_request",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub text: String,
    pub finish_reason: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What one call needs, provider-neutral.
pub struct Prompt<'a> {
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub messages: &'a [Value],
    pub temperature: Option<f64>,
    pub max_tokens: u32,
    pub json: bool,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The system prompt: the `system` field plus any system-role messages.
fn system_text(p: &Prompt<'_>) -> Option<String> {
    let mut parts: Vec<String> = p.system.map(str::to_owned).into_iter().collect();
    parts.extend(
        p.messages
            .iter()
            .filter(|m| m["role"] == "system")
            .map(|m| text_of(&m["content"])),
    );
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// URL path (after the base URL) and JSON body.
/// The URL of a provider's path under its configured base URL.
pub fn endpoint(base: &str, path: &str) -> Result<reqwest::Url, url::ParseError> {
    reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
}

pub fn request(kind: Kind, p: &Prompt<'_>) -> (String, Value) {
    match kind {
        Kind::OpenAi => {
            let mut messages: Vec<Value> = Vec::new();
            if let Some(s) = p.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.extend(
                p.messages
                    .iter()
                    .map(|m| json!({"role": m["role"], "content": text_of(&m["content"])})),
            );
            let mut body =
                json!({"model": p.model, "messages": messages, "max_tokens": p.max_tokens});
            if let Some(t) = p.temperature {
                body["temperature"] = json!(t);
            }
            if p.json {
                body["response_format"] = json!({"type": "json_object"});
            }
            ("/chat/completions".to_owned(), body)
        }
        Kind::Anthropic => {
            let messages: Vec<Value> = p
                .messages
                .iter()
                .filter(|m| m["role"] != "system")
                .map(|m| json!({"role": m["role"], "content": text_of(&m["content"])}))
                .collect();
            let mut body =
                json!({"model": p.model, "messages": messages, "max_tokens": p.max_tokens});
            let mut system = system_text(p);
            if p.json {
                let ask = "Reply with a single JSON object and nothing else.";
                system = Some(system.map_or_else(|| ask.to_owned(), |s| format!("{s}\n\n{ask}")));
            }
            if let Some(s) = system {
                body["system"] = json!(s);
            }
            if let Some(t) = p.temperature {
                body["temperature"] = json!(t);
            }
            ("/v1/messages".to_owned(), body)
        }
        Kind::Gemini => {
            let contents: Vec<Value> = p
                .messages
                .iter()
                .filter(|m| m["role"] != "system")
                .map(|m| {
                    let role = if m["role"] == "assistant" {
                        "model"
                    } else {
                        "user"
                    };
                    json!({"role": role, "parts": [{"text": text_of(&m["content"])}]})
                })
                .collect();
            let mut config = json!({"maxOutputTokens": p.max_tokens});
            if let Some(t) = p.temperature {
                config["temperature"] = json!(t);
            }
            if p.json {
                config["responseMimeType"] = json!("application/json");
            }
            let mut body = json!({"contents": contents, "generationConfig": config});
            if let Some(s) = system_text(p) {
                body["systemInstruction"] = json!({"parts": [{"text": s}]});
            }
            // The model name is one path segment, whatever it holds.
            let model: String =
                percent_encoding::utf8_percent_encode(p.model, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            (format!("/v1beta/models/{model}:generateContent"), body)
        }
    }
}

/// Reads a successful reply.
pub fn reply(kind: Kind, body: &Value) -> Option<Reply> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    match kind {
        Kind::OpenAi => {
            let choice = body["choices"].get(0)?;
            Some(Reply {
                text: choice["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
                input_tokens: n(&body["usage"]["prompt_tokens"]),
                output_tokens: n(&body["usage"]["completion_tokens"]),
            })
        }
        Kind::Anthropic => {
            let text: String = body["content"]
                .as_array()?
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            Some(Reply {
                text,
                finish_reason: body["stop_reason"].as_str().map(str::to_owned),
                input_tokens: n(&body["usage"]["input_tokens"]),
                output_tokens: n(&body["usage"]["output_tokens"]),
            })
        }
        Kind::Gemini => {
            let cand = body["candidates"].get(0)?;
            let text: String = cand["content"]["parts"]
                .as_array()
                .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
                .unwrap_or_default();
            Some(Reply {
                text,
                finish_reason: cand["finishReason"].as_str().map(str::to_owned),
                input_tokens: n(&body["usageMetadata"]["promptTokenCount"]),
                output_tokens: n(&body["usageMetadata"]["candidatesTokenCount"]),
            })
        }
    }
}

/// Classifies an error reply by status and the provider's error body.
pub fn error(status: u16, body: &Value, raw: &str) -> (ErrorClass, String) {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| raw.chars().take(300).collect());
    let lower = message.to_lowercase();
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let too_long = code == "context_length_exceeded"
        || lower.contains("prompt is too long")
        || lower.contains("context length")
        || lower.contains("maximum context")
        || lower.contains("exceeds the maximum number of tokens")
        || lower.contains("input token count");
    let class = match status {
        429 => ErrorClass::RateLimited,
        401 | 403 => ErrorClass::Auth,
        400 | 413 if too_long => ErrorClass::ContextTooLong,
        s if s >= 500 => ErrorClass::ServerError,
        _ => ErrorClass::Invalid,
    };
    (class, format!("HTTP {status}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_provider_errors() {
        let openai = json!({"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "code": "context_length_exceeded"}});
        assert_eq!(error(400, &openai, "").0, ErrorClass::ContextTooLong);
        let anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(error(529, &anthropic, "").0, ErrorClass::ServerError);
        let gemini = json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}});
        assert_eq!(error(429, &gemini, "").0, ErrorClass::RateLimited);
        assert_eq!(error(401, &json!({}), "nope").0, ErrorClass::Auth);
        assert_eq!(
            error(400, &json!({"error": {"message": "bad temperature"}}), "").0,
            ErrorClass::Invalid
        );
    }
}
