//! The typed configuration, field for field as spec.md §3 fixes it.
//!
//! Defaults live here (one place) so `llmux schema`, `llmux check` and `serve` agree.

use super::units::{ByteSize, Dur};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A secret string (API key, token). Its `Debug`/`Display` never show the value, so a
/// config printed in a log line or error cannot leak it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The raw value, for the one place that must send it (an upstream auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was configured (e.g. `${VAR:-}` expanded to nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub routing: RoutingConfig,
    pub circuit_breaker: BreakerConfig,
    pub health_checks: HealthCheckConfig,
    /// A LiteLLM-format price file, relative to the config file.
    pub price_catalog: Option<String>,
    /// Per-model price overrides, keyed by upstream model or `provider/model`.
    pub pricing: BTreeMap<String, PriceOverride>,
    pub telemetry: TelemetryConfig,
    pub state: StateConfig,
}

/// Listeners, limits and gateway keys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub max_body_bytes: ByteSize,
    pub shutdown_grace: Dur,
    pub admin_token: Option<Secret>,
    pub api_keys: Vec<ApiKeyConfig>,
    /// Worker threads for client traffic (default: the CPUs this process may use, at most 4).
    pub threads: Option<usize>,
    /// Whether idle workers steal tasks from busy ones (default: only with more than one
    /// thread; on one thread it only adds cross-thread wake-ups).
    pub work_stealing: Option<bool>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: ByteSize(20 * 1024 * 1024),
            shutdown_grace: Dur::from_secs(30),
            admin_token: None,
            api_keys: Vec::new(),
            threads: None,
            work_stealing: None,
        }
    }
}

/// A gateway key a client sends as `authorization: Bearer`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Labels metrics, traces and budgets (the key never does).
    pub name: String,
    pub key: Secret,
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// Spend limits in USD.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

/// Which adapter speaks to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    Deepseek,
    Qwen,
    AzureOpenai,
    Bedrock,
    OpenaiCompatible,
    Mock,
}

impl ProviderKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Deepseek => "deepseek",
            ProviderKind::Qwen => "qwen",
            ProviderKind::AzureOpenai => "azure_openai",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Mock => "mock",
        }
    }
}

/// One upstream endpoint family (a provider account at one base URL).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub free_tier: Option<FreeTier>,
    /// Extra upstream headers (e.g. `anthropic-beta`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub drop_unsupported_params: bool,
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
    /// anthropic, bedrock: let llmux place cache breakpoints.
    #[serde(default)]
    pub auto_cache: bool,
    /// gemini: passed through as `safetySettings`.
    #[serde(default)]
    pub safety_settings: Option<Vec<SafetySetting>>,
    /// azure_openai: the `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// bedrock: static credentials.
    #[serde(default)]
    pub aws: Option<AwsCredentials>,
    /// mock: behaviour of the built-in fake provider.
    #[serde(default)]
    pub mock: Option<MockProviderOptions>,
}

/// Per-attempt timeouts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Dur,
    /// From the request sent to the response header (and, for streams, the first chunk).
    pub first_byte: Dur,
    /// Longest gap between two body chunks.
    pub idle: Dur,
    /// Whole attempt.
    pub total: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::from_secs(2),
            first_byte: Dur::from_secs(30),
            idle: Dur::from_secs(30),
            total: Dur::from_secs(600),
        }
    }
}

/// Provider free-tier quota to stay within.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreeTier {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

/// What to do when a free tier is used up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    #[default]
    NextTarget,
    Reject,
}

/// Override of the zero-cost health probe.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default = "default_probe_method")]
    pub method: String,
    pub path: String,
}

fn default_probe_method() -> String {
    "GET".into()
}

/// Gemini safety setting.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetySetting {
    pub category: String,
    pub threshold: String,
}

/// Static AWS credentials for bedrock.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    #[serde(default)]
    pub session_token: Option<Secret>,
}

/// Knobs of the built-in fake provider (`kind: mock`). Without `base_url` llmux runs the
/// fake in-process on a loopback port; with one it talks to an external `llmux mock`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MockProviderOptions {
    /// Delay before the response header, in milliseconds.
    pub latency_ms: u64,
    /// Delay between stream chunks, in milliseconds.
    pub chunk_delay_ms: u64,
    /// Fraction of requests (0..1) answered with a provider error.
    pub fail_rate: f64,
}

/// A client-facing model name and where it routes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub strategy: Strategy,
    pub targets: Vec<TargetConfig>,
}

/// How targets of a model are ordered for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Fallback,
    Weighted,
    LowestLatency,
    LowestCost,
}

/// One (provider, upstream model) a model routes to.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Attempts, deadlines and the retry budget.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub max_attempts: u32,
    pub request_timeout: Dur,
    pub retry_budget: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_attempts: 3,
            request_timeout: Dur::from_secs(600),
            retry_budget: 0.2,
        }
    }
}

/// Per-endpoint circuit breaker settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Dur::from_secs(30),
        }
    }
}

/// Active health probes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub interval: Dur,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Dur::from_secs(15),
        }
    }
}

/// USD per 1M tokens, and window sizes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_write_1h: Option<f64>,
    pub output: Option<f64>,
    pub context_window: Option<u64>,
    pub max_output: Option<u64>,
}

/// OpenTelemetry export.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (`http://host:4318`); unset = no export.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported over OTLP.
    pub metrics_interval: Dur,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            metrics_interval: Dur::from_secs(15),
            service_name: "llmux".into(),
        }
    }
}

/// Where shared state (budgets, quotas, breaker state) lives.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    pub key_prefix: String,
    pub on_unavailable: OnUnavailable,
    /// Deadline of every Redis call (all of them run off the request path).
    pub timeout: Dur,
    /// How often a replica syncs leases and reads the fleet's breaker and health state.
    pub sync_interval: Dur,
    /// The share of what is left of a limit that one replica may lease at once.
    pub lease_fraction: f64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Memory,
            redis_url: None,
            key_prefix: "llmux".into(),
            on_unavailable: OnUnavailable::Local,
            timeout: Dur(std::time::Duration::from_millis(100)),
            sync_interval: Dur(std::time::Duration::from_millis(250)),
            lease_fraction: 0.05,
        }
    }
}

/// State backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    #[default]
    Memory,
    Redis,
}

/// Behaviour when the shared state store is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    #[default]
    Local,
    Deny,
}
