//! Identifiers. Generated ids are ULIDs behind a short prefix: 80 random bits
//! make them unguessable, and the time prefix keeps "newest first" listings cheap.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Characters allowed in ids a user chooses (workflow ids, step ids).
pub fn is_valid_user_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

/// The next ULID of this process: increasing, also within a millisecond
/// (the random part is incremented).
fn next_ulid() -> ulid::Ulid {
    next_ulid_at().0
}

/// The next ULID and the time it was made, taken together: ids of this
/// process sort as their times do, even when made at once.
fn next_ulid_at() -> (ulid::Ulid, chrono::DateTime<chrono::Utc>) {
    let mut g = GENERATOR.lock().ok();
    let now = chrono::Utc::now();
    // (`Ulid::default()` is the nil id, so the fallback is spelt out.)
    match g.as_mut().and_then(|g| g.generate().ok()) {
        Some(id) => (id, now),
        None => (ulid::Ulid::new(), now),
    }
}

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new random id, later than every id this process made
            /// before (ids of one millisecond do not sort at random).
            pub fn generate() -> Self {
                Self(format!(
                    "{}{}",
                    $prefix,
                    next_ulid().to_string().to_lowercase()
                ))
            }

            /// A new id and the time it was made: of two ids made in this
            /// process, the later-made has the later (or equal) time.
            pub fn generate_at() -> (Self, chrono::DateTime<chrono::Utc>) {
                let (id, at) = next_ulid_at();
                (
                    Self(format!("{}{}", $prefix, id.to_string().to_lowercase())),
                    at,
                )
            }

            /// Wraps an id read from storage or a URL. Ids are opaque; lookups
            /// of an unknown id simply find nothing.
            pub fn from_string(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(WorkspaceId, "ws_");
id_type!(WorkflowId, "wf_");
id_type!(RunId, "run_");
id_type!(ApiKeyId, "key_");
id_type!(ScheduleId, "sch_");
id_type!(EndpointId, "ep_");
id_type!(AuditId, "aud_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_prefixed() {
        let a = RunId::generate();
        let b = RunId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("run_"));
        assert_eq!(a.as_str().len(), 4 + 26);
    }

    #[test]
    fn ids_of_one_process_increase() {
        let ids: Vec<RunId> = (0..1000).map(|_| RunId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("step_1"));
        assert!(is_valid_user_id("wf_email-draft"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("1abc"));
        assert!(!is_valid_user_id("a.b"));
        assert!(!is_valid_user_id(&"a".repeat(65)));
    }
}
