//! llmux: an LLM gateway sidecar on Pingora.
//!
//! One request's path: [`proxy`] (Pingora glue) parses the body once into
//! [`types::ChatRequest`], [`routing`] plans the targets from an immutable snapshot, the
//! attempt loop calls each target through its [`providers`] adapter, and the answer is
//! translated back to OpenAI's shapes.

pub mod admin;
pub mod budget;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod dns;
pub mod fleet;
pub mod health;
pub mod json_text;
pub mod mock;
pub mod otlp;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod retry_budget;
pub mod routing;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod types;
