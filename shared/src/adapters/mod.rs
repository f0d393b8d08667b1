//! Adapters behind the ports.

pub mod sqlite;
