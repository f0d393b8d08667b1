//! Adapters behind the ports.

pub mod http;
pub mod sqlite;
