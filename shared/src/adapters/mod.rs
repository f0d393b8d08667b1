//! Adapters behind the ports.

pub mod http;
pub mod llm;
pub mod sqlite;
