//! Inbound webhooks ("hooks"): a public URL that starts runs of one
//! workflow when a service it is given to sends a signed request. How a
//! request is checked is in `crate::hooks`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{WorkflowId, WorkspaceId};

/// A hook's id: the last part of its public URL, so it is made of 160
/// random bits (nobody can guess one to send requests to).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HookId(String);

impl HookId {
    pub fn generate() -> Self {
        use std::fmt::Write as _;
        let bytes: [u8; 20] = rand::random();
        let mut s = String::with_capacity(3 + 40);
        s.push_str("hk_");
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }

    /// Wraps an id read from storage or a URL (an unknown one finds
    /// nothing).
    pub fn from_string(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HookId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the bytes of a signature header are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// How a request to a hook proves it comes from the sender. `secret`
/// names a workspace secret (`PUT /v1/secrets/{name}`) holding the
/// signing secret the sender was given; it is read when a request comes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Verification {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`; `svix-` headers too), a `whsec_` secret.
    StandardWebhooks { secret: String },
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github { secret: String },
    /// Stripe: `Stripe-Signature: t=<time>,v1=<hex>` over `<time>.<body>`.
    Stripe { secret: String },
    /// HMAC-SHA256 of the body in a named header, hex or base64, after an
    /// optional prefix (such as `sha256=`).
    Hmac {
        secret: String,
        header: String,
        #[serde(default)]
        encoding: Encoding,
        #[serde(default)]
        prefix: String,
    },
}

impl Verification {
    /// The name of the workspace secret it checks with.
    pub fn secret(&self) -> &str {
        match self {
            Self::StandardWebhooks { secret }
            | Self::Github { secret }
            | Self::Stripe { secret }
            | Self::Hmac { secret, .. } => secret,
        }
    }

    /// The name the API gives the scheme.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::StandardWebhooks { .. } => "standard_webhooks",
            Self::Github { .. } => "github",
            Self::Stripe { .. } => "stripe",
            Self::Hmac { .. } => "hmac",
        }
    }

    /// What tells two deliveries of one message apart when the hook sets
    /// no `dedupe` template: the sender's id for it where the signature
    /// covers one (None: the body itself, by its SHA-256; GitHub's
    /// delivery id header is not signed, so a replay could change it).
    pub fn default_dedupe(&self) -> Option<&'static str> {
        match self {
            Self::StandardWebhooks { .. } => {
                Some("{{ headers['webhook-id'] or headers['svix-id'] }}")
            }
            Self::Stripe { .. } => Some("{{ body.id }}"),
            Self::Github { .. } | Self::Hmac { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    pub workspace_id: WorkspaceId,
    pub id: HookId,
    pub workflow_id: WorkflowId,
    pub verification: Verification,
    /// A template over `body` and `headers` whose text tells repeated
    /// deliveries of one message apart (one run per text).
    pub dedupe: Option<String>,
    /// The run's input: a value whose strings are templates over `body`
    /// and `headers`. None: the parsed body.
    pub input: Option<Value>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A verified request to a hook, kept until a run is started from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// `rcpt_…`: what the sender is answered with.
    pub id: String,
    pub workspace_id: WorkspaceId,
    pub hook_id: HookId,
    pub received_at: DateTime<Utc>,
    /// Its headers, names in lower case (credentials left out).
    pub headers: BTreeMap<String, String>,
    /// Its body (UTF-8: JSON, a form or text).
    pub body: String,
    /// The text that names its message (the hook's `dedupe` made of it):
    /// one run per text.
    pub dedupe: String,
}
