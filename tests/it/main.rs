//! The integration tests, in one binary (one link, one process): each
//! module is a suite; `common` holds the servers and clients they share.
//! Run one suite with `cargo test --test it <module>::` (e.g. `scenarios::`).

mod common;

mod access;
mod api;
mod crash;
mod egress;
mod events;
mod examples;
mod hooks;
mod http_step;
mod limits;
mod llm_spending;
mod llm_step;
mod quickstart;
mod scenarios;
mod schedules;
mod secrets;
mod webhooks;
