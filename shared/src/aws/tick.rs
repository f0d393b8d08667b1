//! The tick function's work, every minute: the sweep of runs whose driver
//! is gone (`sweep`), then the schedules that are due (the same
//! `App::fire_schedules` as `weft dev`'s in-process tick), both on the
//! clock of the schedule's event; then outbound webhooks: the deliveries
//! of runs that ended are made (`App::notify_ended_runs`, as `weft dev`'s
//! sender loop does) and handed to the delivery queue, and those due that
//! no message holds are handed to it again (`App::hand_over_due`). Without
//! a delivery queue the tick sends them itself (`App::deliver_due`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use super::{FunctionError, Stack, TickEvent};

/// How long one tick goes on sending webhook deliveries (the function
/// may run 120 s; the next tick goes on).
const WEBHOOK_BUDGET: Duration = Duration::from_secs(60);

impl Stack {
    pub async fn tick(&self, ev: TickEvent) -> Result<Value, FunctionError> {
        let now = ev.time.unwrap_or_else(Utc::now);
        let mut out = self.sweep(TickEvent { time: Some(now) }).await?;
        let app = Arc::new(self.app().map_err(FunctionError::from_core)?);
        let fired = app.fire_schedules(now).await;
        out["schedules"] = json!({
            "due": fired.due,
            "started": fired.started,
            "errors": fired.errors,
        });
        let began = Instant::now();
        if self.delivery_queue.is_some() {
            let mut made = 0;
            while began.elapsed() < WEBHOOK_BUDGET {
                let m = app
                    .notify_ended_runs()
                    .await
                    .map_err(|e| FunctionError::StoreUnavailable(e.to_string()))?;
                made += m;
                if m == 0 {
                    break;
                }
            }
            let queued = app
                .hand_over_due(now)
                .await
                .map_err(|e| FunctionError::StoreUnavailable(e.to_string()))?;
            out["webhooks"] = json!({"made": made, "queued_again": queued});
            return Ok(out);
        }
        let (mut made, mut started) = (0, 0);
        // Each pass only starts sends (each at most `send::TIMEOUT`);
        // passes go on while there is work and time.
        while began.elapsed() < WEBHOOK_BUDGET {
            let m = app
                .notify_ended_runs()
                .await
                .map_err(|e| FunctionError::StoreUnavailable(e.to_string()))?;
            let t = app
                .deliver_due(Utc::now())
                .await
                .map_err(|e| FunctionError::StoreUnavailable(e.to_string()))?;
            made += m;
            started += t;
            if m == 0 && t == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The function is frozen once it answers: the sends end first.
        app.webhooks_idle(crate::webhooks::send::TIMEOUT + Duration::from_secs(5))
            .await;
        out["webhooks"] = json!({"made": made, "tried": started});
        Ok(out)
    }
}
