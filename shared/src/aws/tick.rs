//! The tick function's work, every minute: the sweep of runs whose driver
//! is gone (`sweep`), then the schedules that are due (the same
//! `App::fire_schedules` as `weft dev`'s in-process tick), both on the
//! clock of the schedule's event.

use chrono::Utc;
use serde_json::{Value, json};

use super::{FunctionError, Stack, TickEvent};

impl Stack {
    pub async fn tick(&self, ev: TickEvent) -> Result<Value, FunctionError> {
        let now = ev.time.unwrap_or_else(Utc::now);
        let mut out = self.sweep(TickEvent { time: Some(now) }).await?;
        let app = self.app().map_err(FunctionError::from_core)?;
        let fired = app.fire_schedules(now).await;
        out["schedules"] = json!({
            "due": fired.due,
            "started": fired.started,
            "errors": fired.errors,
        });
        Ok(out)
    }
}
