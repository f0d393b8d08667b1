//! Checks that a request to a hook was signed by its sender, for each
//! scheme a hook can use. Every check is over the raw body, compares in
//! constant time (`ring::hmac::verify`), and, where the scheme signs a
//! time, refuses one more than `TOLERANCE_SECS` away from now (a replayed
//! request).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::domain::{Encoding, Verification};

/// How far a signed time may be from now, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Why a request was refused. Each says what was wrong with it, never
/// anything about the secret.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the `{0}` header is missing")]
    Missing(&'static str),
    #[error("the `{0}` header is not in the form the scheme sends")]
    Malformed(String),
    #[error("the signed timestamp is more than 5 minutes from now (a replayed or delayed request)")]
    Stale,
    #[error("no signature matches the body")]
    Mismatch,
    /// The workspace secret is not a usable key for the scheme (a
    /// `whsec_` secret that is not base64): the hook's owner must fix it.
    #[error("the hook's signing secret is not valid for its scheme")]
    Secret,
}

/// The request's headers, names in lower case.
pub type Headers = BTreeMap<String, String>;

fn header<'h>(h: &'h Headers, name: &'static str) -> Result<&'h str, VerifyError> {
    h.get(name)
        .map(|v| v.trim())
        .ok_or(VerifyError::Missing(name))
}

/// Shortest signing key accepted, in bytes (a shorter one, an empty one
/// above all, is one anybody can sign with).
pub const MIN_KEY_BYTES: usize = 16;

fn fresh(ts: &str, now: i64, name: &str) -> Result<(), VerifyError> {
    // Seconds since 1970, as senders write them: at most 10 digits.
    if ts.is_empty() || ts.len() > 10 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(name.to_owned()));
    }
    let t: i64 = ts
        .parse()
        .map_err(|_| VerifyError::Malformed(name.to_owned()))?;
    if now.abs_diff(t) > TOLERANCE_SECS as u64 {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

/// The HMAC key of a secret's text (`whsec_` ones are base64 of the key),
/// refused when too short to be a key.
pub fn key_bytes(v: &Verification, secret: &str) -> Result<Vec<u8>, VerifyError> {
    let bytes = match v {
        Verification::StandardWebhooks { .. } => STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .map_err(|_| VerifyError::Secret)?,
        _ => secret.as_bytes().to_vec(),
    };
    if bytes.len() < MIN_KEY_BYTES {
        return Err(VerifyError::Secret);
    }
    Ok(bytes)
}

/// True if one of `tags` is the HMAC of `parts` under `key`.
fn any_matches(key: &hmac::Key, parts: &[&[u8]], tags: &[Vec<u8>]) -> bool {
    let mut msg = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        msg.extend_from_slice(p);
    }
    // Every tag is checked (no early exit on the first that fails).
    tags.iter()
        .fold(false, |ok, t| hmac::verify(key, &msg, t).is_ok() | ok)
}

/// Checks `body` and `headers` against the hook's scheme with `secret`
/// (the value of the workspace secret it names), at `now` (Unix seconds).
pub fn verify(
    v: &Verification,
    secret: &str,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes(v, secret)?);
    match v {
        Verification::StandardWebhooks { .. } => standard(&key, headers, body, now),
        Verification::Github { .. } => {
            let sig = header(headers, "x-hub-signature-256")?;
            let tag = sig
                .strip_prefix("sha256=")
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| VerifyError::Malformed("x-hub-signature-256".into()))?;
            check(any_matches(&key, &[body], &[tag]))
        }
        Verification::Stripe { .. } => {
            let sig = header(headers, "stripe-signature")?;
            let mut t = None;
            let mut tags = Vec::new();
            for part in sig.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = Some(v),
                    Some(("v1", v)) => tags.push(
                        hex::decode(v)
                            .map_err(|_| VerifyError::Malformed("stripe-signature".into()))?,
                    ),
                    _ => {}
                }
            }
            let t = t.ok_or_else(|| VerifyError::Malformed("stripe-signature".into()))?;
            if tags.is_empty() {
                return Err(VerifyError::Malformed("stripe-signature".into()));
            }
            fresh(t, now, "stripe-signature")?;
            // Stripe signs with the secret's text as it is shown (`whsec_…`).
            check(any_matches(&key, &[t.as_bytes(), b".", body], &tags))
        }
        Verification::Hmac {
            header: name,
            encoding,
            prefix,
            ..
        } => {
            let lower = name.to_ascii_lowercase();
            let sig = headers
                .get(&lower)
                .map(|v| v.trim())
                .ok_or_else(|| VerifyError::Malformed(format!("{lower} (missing)")))?;
            let sig = sig
                .strip_prefix(prefix.as_str())
                .ok_or_else(|| VerifyError::Malformed(lower.clone()))?;
            let tag = match encoding {
                Encoding::Hex => hex::decode(sig).ok(),
                Encoding::Base64 => STANDARD.decode(sig).ok(),
            }
            .ok_or(VerifyError::Malformed(lower))?;
            check(any_matches(&key, &[body], &[tag]))
        }
    }
}

fn check(ok: bool) -> Result<(), VerifyError> {
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Standard Webhooks v1 (and Svix, which sends the same under `svix-`
/// names): `v1,<base64>` signatures, space-separated, over
/// `<id>.<timestamp>.<body>`, keyed by the base64 after `whsec_`.
fn standard(key: &hmac::Key, headers: &Headers, body: &[u8], now: i64) -> Result<(), VerifyError> {
    let svix = !headers.contains_key("webhook-id") && headers.contains_key("svix-id");
    let names: [&'static str; 3] = if svix {
        ["svix-id", "svix-timestamp", "svix-signature"]
    } else {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    };
    let id = header(headers, names[0])?;
    let ts = header(headers, names[1])?;
    let sigs = header(headers, names[2])?;
    fresh(ts, now, names[1])?;
    let tags: Vec<Vec<u8>> = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| STANDARD.decode(b).ok())
        .collect();
    if tags.is_empty() {
        return Err(VerifyError::Malformed(names[2].into()));
    }
    check(any_matches(
        key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
        &tags,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn std_hook() -> Verification {
        Verification::StandardWebhooks { secret: "s".into() }
    }

    // The example of the Standard Webhooks specification's libraries.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers(sig: &str) -> Headers {
        h(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", sig),
        ])
    }

    #[test]
    fn standard_webhooks_accepts_the_specifications_example() {
        let hs = sw_headers(SW_SIG);
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &hs, SW_BODY, 1614265330),
            Ok(())
        );
        // One of several (a key being rotated) is enough.
        let hs = sw_headers(&format!("v1,bm90IGl0 {SW_SIG}"));
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &hs, SW_BODY, 1614265330),
            Ok(())
        );
        // Under Svix's names too.
        let svix = h(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIG),
        ]);
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &svix, SW_BODY, 1614265330),
            Ok(())
        );
    }

    #[test]
    fn standard_webhooks_refuses_a_changed_body_an_old_time_and_a_bad_secret() {
        let hs = sw_headers(SW_SIG);
        assert_eq!(
            verify(
                &std_hook(),
                SW_SECRET,
                &hs,
                br#"{"test": 2432232315}"#,
                1614265330
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &hs, SW_BODY, 1614265330 + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &hs, SW_BODY, 1614265330 - 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&std_hook(), "whsec_!!", &hs, SW_BODY, 1614265330),
            Err(VerifyError::Secret)
        );
        // Another id is another signed message.
        let mut other = hs.clone();
        other.insert("webhook-id".into(), "msg_other".into());
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &other, SW_BODY, 1614265330),
            Err(VerifyError::Mismatch)
        );
        let mut missing = hs;
        missing.remove("webhook-signature");
        assert_eq!(
            verify(&std_hook(), SW_SECRET, &missing, SW_BODY, 1614265330),
            Err(VerifyError::Missing("webhook-signature"))
        );
    }

    #[test]
    fn short_keys_and_odd_timestamps_are_refused() {
        let hs = sw_headers(SW_SIG);
        for secret in ["whsec_", "whsec_AA==", ""] {
            assert_eq!(
                verify(&std_hook(), secret, &hs, SW_BODY, 1614265330),
                Err(VerifyError::Secret),
                "{secret:?}"
            );
        }
        let gh = Verification::Github { secret: "s".into() };
        assert_eq!(
            verify(
                &gh,
                "short",
                &h(&[("x-hub-signature-256", "sha256=00")]),
                b"",
                0
            ),
            Err(VerifyError::Secret)
        );
        for ts in [
            "-9223372036854775808",
            "99999999999",
            "+1614265330",
            " ",
            "1e9",
        ] {
            let mut bad = hs.clone();
            bad.insert("webhook-timestamp".into(), ts.into());
            assert!(
                matches!(
                    verify(&std_hook(), SW_SECRET, &bad, SW_BODY, 1614265330),
                    Err(VerifyError::Malformed(_) | VerifyError::Missing(_))
                ),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn github_accepts_its_documented_example() {
        let v = Verification::Github { secret: "s".into() };
        let secret = "It's a Secret to Everybody";
        let good = h(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(verify(&v, secret, &good, b"Hello, World!", 0), Ok(()));
        assert_eq!(
            verify(&v, secret, &good, b"Hello, World?", 0),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                &v,
                "another secret of some length",
                &good,
                b"Hello, World!",
                0
            ),
            Err(VerifyError::Mismatch)
        );
        let bad = h(&[("x-hub-signature-256", "sha1=abcd")]);
        assert!(matches!(
            verify(&v, secret, &bad, b"Hello, World!", 0),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn stripe_checks_the_signed_time_and_body() {
        let v = Verification::Stripe { secret: "s".into() };
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        // HMAC-SHA256("whsec_test_secret", "1700000000." + body), hex.
        let sig = "c0475716eb2200f1fe97fcf35a3c05d1fd4f8ba9a07a596730c8d18bb87c0672";
        let good = h(&[(
            "stripe-signature",
            &format!("t=1700000000,v1=00ff,v1={sig},v0=zz"),
        )]);
        assert_eq!(
            verify(&v, "whsec_test_secret", &good, body, 1700000100),
            Ok(())
        );
        assert_eq!(
            verify(&v, "whsec_test_secret", &good, body, 1700000000 + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&v, "whsec_other_secret_value", &good, body, 1700000000),
            Err(VerifyError::Mismatch)
        );
        // The time is signed: changing it breaks the signature.
        let moved = h(&[("stripe-signature", &format!("t=1700000001,v1={sig}"))]);
        assert_eq!(
            verify(&v, "whsec_test_secret", &moved, body, 1700000000),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn hmac_reads_the_named_header_with_its_prefix_and_encoding() {
        let hex_hook = Verification::Hmac {
            secret: "s".into(),
            header: "X-Signature".into(),
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
        };
        let secret = "It's a Secret to Everybody";
        let tag = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let good = h(&[("x-signature", &format!("sha256={tag}"))]);
        assert_eq!(
            verify(&hex_hook, secret, &good, b"Hello, World!", 0),
            Ok(())
        );
        let no_prefix = h(&[("x-signature", tag)]);
        assert!(matches!(
            verify(&hex_hook, secret, &no_prefix, b"Hello, World!", 0),
            Err(VerifyError::Malformed(_))
        ));
        let b64_hook = Verification::Hmac {
            secret: "s".into(),
            header: "X-Signature".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        };
        let b64 = STANDARD.encode(hex::decode(tag).unwrap_or_default());
        let good = h(&[("x-signature", &b64)]);
        assert_eq!(
            verify(&b64_hook, secret, &good, b"Hello, World!", 0),
            Ok(())
        );
        assert_eq!(
            verify(&b64_hook, secret, &good, b"Hello", 0),
            Err(VerifyError::Mismatch)
        );
    }
}
