use super::{App, AppError};
use crate::domain::WorkspaceId;
use crate::ports::SecretMeta;

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
        value: String,
    ) -> Result<SecretMeta, AppError> {
        check_name(name)?;
        Ok(self.stores.secrets.put_secret(ws, name, &value).await?)
    }

    /// The workspace's own secrets (not the signing keys of its webhook
    /// endpoints, which Weft keeps beside them).
    pub async fn list_secrets(&self, ws: &WorkspaceId) -> Result<Vec<SecretMeta>, AppError> {
        let mut all = self.stores.secrets.list_secrets(ws).await?;
        all.retain(|m| crate::dsl::is_secret_name(&m.name));
        Ok(all)
    }

    pub async fn delete_secret(&self, ws: &WorkspaceId, name: &str) -> Result<(), AppError> {
        // A signing key is not the tenant's to delete (and no name of
        // theirs looks like one).
        if !crate::dsl::is_secret_name(name) {
            return Err(AppError::NotFound(format!("secret `{name}` not found")));
        }
        if self.stores.secrets.delete_secret(ws, name).await? {
            Ok(())
        } else {
            Err(AppError::NotFound(format!("secret `{name}` not found")))
        }
    }
}
