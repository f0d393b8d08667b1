//! How secrets reach http steps without ever entering run state.
//!
//! A secret is resolved only where the definition names it: an http step's
//! string that holds `{{ secrets.NAME }}` is split at validation into text
//! and secret parts (`dsl::SecretSlot`). The engine renders the text parts
//! and hands the executor a list of slots — a path into the request and its
//! parts — next to the request, never inside it; the executor fetches the
//! named secrets, builds each string and puts it at its path just before the
//! call. Nothing rendered from run data (input, step outputs, replies) is
//! ever read for secret names, so no data can ask for a secret. Whatever
//! the call returns is redacted of the values, in the forms a value takes
//! on the wire.

use base64::Engine as _;
use serde_json::{Map as JsonMap, Value};

use crate::domain::{StepError, WorkspaceId};
use crate::dsl::SecretSlot;
use crate::ports::{HttpRequest, PathSeg, SecretPart, SecretStore, SecretString};
use crate::template::{self, Context, Part};

/// What a secret's value is replaced with wherever it would be recorded.
pub const REDACTED: &str = "[redacted]";
fn template_error(e: template::TemplateError) -> StepError {
    StepError::permanent("template_error", e.message)
}

/// The slots of a request, with their text parts rendered: what the engine
/// puts in the request's `secrets`.
pub fn render_slots(slots: &[SecretSlot], ctx: &Context) -> Result<Vec<SecretString>, StepError> {
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        let mut parts = Vec::with_capacity(slot.parts.len());
        for p in &slot.parts {
            parts.push(match p {
                Part::Text(t) => SecretPart::Text(t.clone()),
                Part::Template(src) => {
                    SecretPart::Text(template::render_text(src, ctx).map_err(template_error)?)
                }
                Part::Secret(name) => SecretPart::Secret(name.clone()),
            });
        }
        out.push(SecretString {
            path: slot.path.clone(),
            parts,
        });
    }
    Ok(out)
}

/// The place a path names inside a request, if it exists.
fn at_path<'v>(req: &'v mut HttpRequest, path: &[PathSeg]) -> Option<&'v mut Value> {
    let (PathSeg::Key(field), rest) = path.split_first()? else {
        return None;
    };
    let mut cur = match field.as_str() {
        "url" => &mut req.url,
        "query" => &mut req.query,
        "headers" => &mut req.headers,
        "body" => &mut req.body,
        _ => return None,
    };
    for seg in rest {
        cur = match seg {
            PathSeg::Key(k) => cur.as_object_mut()?.get_mut(k)?,
            PathSeg::Index(i) => cur.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// Where a request carries secrets once they are filled in.
#[derive(Debug, Default)]
pub struct Filled {
    /// Hides the values (and their encoded forms) in what comes back.
    pub redactor: Redactor,
    /// Header names (lowercase) whose values hold a secret.
    pub headers: Vec<String>,
    /// The body holds a secret.
    pub in_body: bool,
    /// The secrets read, by name (each once).
    pub names: Vec<String>,
}

fn malformed(what: &str) -> StepError {
    StepError::permanent(
        "invalid_request",
        format!("the request's secret slots are malformed: {what}"),
    )
}

/// Fills in the secrets the request's slots name, taking the slots out of
/// the request.
pub async fn fill(
    secrets: &dyn SecretStore,
    ws: &WorkspaceId,
    request: &mut HttpRequest,
) -> Result<Filled, StepError> {
    let slots = std::mem::take(&mut request.secrets);
    let mut values: Vec<(String, String)> = Vec::new();
    let mut filled = Filled::default();
    for slot in &slots {
        let mut text = String::new();
        for part in &slot.parts {
            let name = match part {
                SecretPart::Text(t) => {
                    text.push_str(t);
                    continue;
                }
                SecretPart::Secret(name) => name,
            };
            if let Some((_, v)) = values.iter().find(|(n, _)| n == name) {
                text.push_str(v);
                continue;
            }
            let value = match secrets.get_secret(ws, name).await {
                Ok(Some(v)) => v,
                Ok(None) => {
                    return Err(StepError::permanent(
                        "secret_not_found",
                        format!(
                            "secret `{name}` is not set in this workspace (PUT /v1/secrets/{name} sets it)"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(StepError::transient(
                        "secrets_unavailable",
                        format!("secrets could not be read: {e}"),
                    ));
                }
            };
            text.push_str(&value);
            values.push((name.to_owned(), value));
        }
        match slot.path.as_slice() {
            [PathSeg::Key(f), PathSeg::Key(h), ..] if f == "headers" => {
                filled.headers.push(h.to_ascii_lowercase());
            }
            [PathSeg::Key(f), ..] if f == "body" => filled.in_body = true,
            _ => {}
        }
        *at_path(request, &slot.path)
            .ok_or_else(|| malformed("a slot's path is not in the request"))? = Value::String(text);
    }
    filled.names = values.iter().map(|(n, _)| n.clone()).collect();
    filled.redactor = Redactor::new(values.into_iter().map(|(_, v)| v));
    Ok(filled)
}

/// Replaces secret values, and the forms they take on the wire (URL and
/// form encoding, JSON escaping, base64 inside a longer text), with
/// `[redacted]`.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is hidden whole.
    needles: Vec<String>,
}

/// Shortest encoded fragment searched for (shorter ones match by chance).
const MIN_FRAGMENT: usize = 6;

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        let add = |n: String, needles: &mut Vec<String>| {
            if !n.is_empty() && !needles.contains(&n) {
                needles.push(n);
            }
        };
        for v in values {
            if v.is_empty() {
                continue;
            }
            for form in encoded_forms(&v) {
                add(form, &mut needles);
            }
            add(v, &mut needles);
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn redact_str(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }

    /// Redacts every string of a value, object keys included.
    pub fn redact(&self, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        match v {
            Value::String(s) => *s = self.redact_str(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact(i)),
            Value::Object(m) => {
                let entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
                let mut out = JsonMap::new();
                for (k, mut val) in entries {
                    self.redact(&mut val);
                    out.insert(self.redact_str(&k), val);
                }
                *m = out;
            }
            _ => {}
        }
    }
}

/// The forms a value takes when a client or server encodes it.
fn encoded_forms(v: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut out = Vec::new();
    let form: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
    let percent = utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
    // As `quote` in common libraries writes it: `/`, `_`, `.`, `-`, `~` kept.
    const QUOTE: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'_')
        .remove(b'.')
        .remove(b'-')
        .remove(b'~');
    let quoted = utf8_percent_encode(v, QUOTE).to_string();
    for f in [form, percent, quoted] {
        out.push(lower_escapes(&f));
        out.push(f);
    }
    if let Ok(json) = serde_json::to_string(v) {
        let inner = json[1..json.len() - 1].to_owned();
        out.push(inner.replace('/', "\\/"));
        out.push(inner);
    }
    // JSON as other encoders write it: every non-ASCII character, and in
    // HTML-safe JSON `<`, `>`, `&` and `'` too, as \uXXXX (either case).
    for html in [false, true] {
        for upper in [false, true] {
            out.push(json_escaped(v, html, upper));
        }
    }
    // As the URL library writes it into a path or a query (it leaves some
    // characters as they are and escapes others), and into a host
    // (lowercase).
    if let Ok(mut u) = url::Url::parse("http://h/") {
        u.set_path(&format!("/{v}"));
        out.push(u.path().trim_start_matches('/').to_owned());
        u.set_query(Some(v));
        out.extend(u.query().map(str::to_owned));
    }
    out.push(v.to_ascii_lowercase());
    out.push(v.to_ascii_uppercase());
    // HTML-escaped, as servers echo it into pages and error messages.
    for apos in ["&#x27;", "&#39;"] {
        out.push(
            v.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', apos),
        );
    }
    // Its bytes in hex.
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    // Base64 of a text holding the value (`user:secret` in Basic auth):
    // the characters that encode only the value's bytes, at each of the
    // three alignments it can have.
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        for offset in 0..3usize {
            let mut bytes = vec![0u8; offset];
            bytes.extend_from_slice(v.as_bytes());
            let enc = engine.encode(&bytes);
            let skip = match offset {
                0 => 0,
                1 => 2,
                _ => 3,
            };
            let stable = bytes.len() * 8 / 6;
            if let Some(frag) = enc.get(skip..stable)
                && frag.len() >= MIN_FRAGMENT
            {
                out.push(frag.to_owned());
            }
        }
    }
    out.retain(|f| f != v && f.len() >= MIN_FRAGMENT.min(v.len()));
    out
}

/// A string's JSON form without its quotes, with non-ASCII characters (and,
/// for `html`, `<>&'`) as `\uXXXX` escapes.
fn json_escaped(v: &str, html: bool, upper: bool) -> String {
    let mut out = String::with_capacity(v.len() * 2);
    for c in v.chars() {
        let escape = !c.is_ascii() || (html && matches!(c, '<' | '>' | '&' | '\''));
        if escape || (c as u32) < 0x20 {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                if upper {
                    out.push_str(&format!("\\u{unit:04X}"));
                } else {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        } else {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
    }
    out
}

/// `%2F` → `%2f`: the same encoding with lowercase hex digits.
fn lower_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_percent = 0;
    for c in s.chars() {
        if c == '%' {
            after_percent = 2;
            out.push(c);
        } else if after_percent > 0 {
            after_percent -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redaction_hides_values_anywhere() {
        let r = Redactor::new(["s3cret".to_owned()]);
        let mut out = json!({"echo": "key=s3cret", "list": ["s3cret"], "s3cret": 1});
        r.redact(&mut out);
        assert_eq!(
            out,
            json!({"echo": "key=[redacted]", "list": ["[redacted]"], "[redacted]": 1})
        );
    }

    #[test]
    fn escaped_json_urls_and_hosts_are_redacted() {
        let r = Redactor::new([
            "p\u{e4}ssw\u{f6}rd-9Q".to_owned(),
            "k3y&v<a>l-zz".to_owned(),
        ]);
        let text = r#"{"error": "bad key k3y\u0026v\u003ca\u003el-zz for p\u00e4ssw\u00f6rd-9Q"}"#;
        let out = r.redact_str(text);
        assert!(!out.contains("k3y") && !out.contains("rd-9Q"), "{out}");
        let r = Redactor::new(["ab cd!ef(g)*h;k".to_owned(), "LocalHost".to_owned()]);
        let out = r.redact_str("GET /a/ab%20cd!ef(g)*h;k from localhost");
        assert!(
            !out.contains("cd!ef") && !out.contains("localhost"),
            "{out}"
        );
    }

    #[test]
    fn encoded_forms_are_redacted() {
        let secret = "a+b/c=d e&f\"g\\h:ij";
        let r = Redactor::new([secret.to_owned()]);
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json_escaped = serde_json::to_string(secret).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
        let basic2 = base64::engine::general_purpose::STANDARD.encode(format!("us:{secret}"));
        let basic3 = base64::engine::general_purpose::STANDARD.encode(format!("u:{secret}!"));
        let tricky = Redactor::new(["Sk+ab/Cd=ef&g<h>'i~j*k!lZZ9".to_owned()]);
        for text in [
            "echo: Sk+ab/Cd=ef&amp;g&lt;h&gt;&#x27;i~j*k!lZZ9",
            "echo: Sk+ab/Cd=ef&amp;g&lt;h&gt;&#39;i~j*k!lZZ9",
            "echo: Sk%2Bab/Cd%3Def%26g%3Ch%3E%27i~j%2Ak%21lZZ9",
            "echo: SK+AB/CD=EF&G<H>'I~J*K!LZZ9",
            "echo: 536b2b61622f43643d656626673c683e27697e6a2a6b216c5a5a39",
        ] {
            let out = tricky.redact_str(text);
            assert!(
                out.contains(REDACTED) && !out.contains("Cd"),
                "{text} → {out}"
            );
        }
        for text in [
            format!("GET /?key={form} failed"),
            format!("GET /?key={} failed", form.to_lowercase()),
            format!("body was {json_escaped}"),
            format!("Authorization: Basic {basic}"),
            format!("Authorization: Basic {basic2}"),
            format!("Authorization: Basic {basic3}"),
        ] {
            let out = r.redact_str(&text);
            assert!(out.contains(REDACTED), "{text} → {out}");
            assert!(!out.contains(&form), "{out}");
        }
    }
}
