//! Weft's core: the workflow definition language, the DAG engine, the ports
//! between the core and the world with their adapters, and the HTTP API.

pub mod adapters;
pub mod api;
pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod dag;
pub mod domain;
pub mod dsl;
pub mod engine;
pub mod hooks;
pub mod memory;
pub mod orchestrator;
pub mod platform;
pub mod ports;
pub mod schedules;
pub mod step_secrets;
pub mod template;
pub mod webhooks;
