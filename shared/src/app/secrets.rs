use serde_json::Value;

use super::{App, AppError};
use crate::domain::WorkspaceId;
use crate::dsl::{Path, ValidationError};
use crate::ports::SecretMeta;

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Secret names are usable in templates as `secrets.NAME`.
fn check_name(name: &str) -> Result<(), AppError> {
    if crate::dsl::is_secret_name(name) {
        Ok(())
    } else {
        Err(AppError::BadRequest(format!(
            "`{name}` is not a valid secret name: use 1-64 letters, digits or `_`, starting with a letter or `_`"
        )))
    }
}

impl App {
    pub async fn put_secret(
        &self,
        ws: &WorkspaceId,
        name: &str,
        body: Value,
    ) -> Result<SecretMeta, AppError> {
        check_name(name)?;
        let value = match &body {
            Value::Object(m) => match (m.get("value"), m.keys().find(|k| *k != "value")) {
                (_, Some(k)) => {
                    return Err(AppError::InvalidRequest(vec![ValidationError::new(
                        &Path::root().key(k),
                        format!("unknown field `{k}`; send {{\"value\": \"...\"}}"),
                    )]));
                }
                (Some(Value::String(v)), None) if !v.is_empty() && v.len() <= MAX_SECRET_BYTES => {
                    v.clone()
                }
                _ => {
                    return Err(AppError::InvalidRequest(vec![ValidationError::new(
                        &Path::root().key("value"),
                        format!(
                            "`value` must be a non-empty string of at most {MAX_SECRET_BYTES} bytes"
                        ),
                    )]));
                }
            },
            _ => {
                return Err(AppError::BadRequest(
                    "the body must be a JSON object such as {\"value\": \"...\"}".into(),
                ));
            }
        };
        Ok(self.stores.secrets.put_secret(ws, name, &value).await?)
    }

    pub async fn list_secrets(&self, ws: &WorkspaceId) -> Result<Vec<SecretMeta>, AppError> {
        Ok(self.stores.secrets.list_secrets(ws).await?)
    }

    pub async fn delete_secret(&self, ws: &WorkspaceId, name: &str) -> Result<(), AppError> {
        if self.stores.secrets.delete_secret(ws, name).await? {
            Ok(())
        } else {
            Err(AppError::NotFound(format!("secret `{name}` not found")))
        }
    }
}
