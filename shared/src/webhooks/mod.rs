//! Outbound webhooks: what a delivery's body is (`payload`), how it is
//! signed (`sign`, Standard Webhooks v1), when a failed one is tried
//! again (`schedule`) and how it is sent (`send`). The endpoints and
//! deliveries are kept by the `WebhookStore`; `App::notify_ended_runs` makes
//! deliveries of runs that ended and `App::deliver_due` sends them.

pub mod payload;
pub mod schedule;
pub mod send;
pub mod sign;
