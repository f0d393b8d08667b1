//! Weft's core: the workflow definition language, the DAG engine, the ports
//! between the core and the world with their adapters, and the HTTP API.

pub mod domain;
pub mod dsl;
pub mod template;
pub mod dag;
pub mod engine;
pub mod adapters;
pub mod ports;
