//! The routing table: an immutable snapshot built from a validated config.
//!
//! A request loads the current snapshot once (from an `ArcSwap`) and keeps it for all its
//! attempts, so a reload never changes the plan of a request in flight.

use crate::config::{Budget, Config, FreeTier, ProbeConfig, ProviderKind, Strategy, Timeouts};
use crate::health::{BreakerPolicy, Endpoint};
use crate::pricing::{Catalog, Price};
use crate::providers::{self, Adapter, BaseUrl};
use crate::retry_budget::RetryBudget;
use crate::types::GatewayError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One configured provider, ready to be called.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base: BaseUrl,
    pub adapter: Arc<dyn Adapter>,
    pub timeouts: Timeouts,
    pub region: Option<String>,
    /// The configured key, kept only to scrub it from any upstream text.
    pub api_key: String,
    /// A configured probe that replaces the adapter's zero-cost default.
    pub probe: Option<ProbeConfig>,
    /// USD limits on this provider's spend.
    pub budget: Option<Budget>,
    /// The provider's free quota, to stay inside of.
    pub free_tier: Option<FreeTier>,
}

/// One (provider, upstream model) a request may be sent to.
#[derive(Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
    pub weight: u32,
    /// Breaker, health and drain state, shared by every alias that routes here.
    pub endpoint: Arc<Endpoint>,
    /// The model's price and limits from the catalog (None: unknown, cost not reported).
    pub price: Option<Arc<Price>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider.name, self.model)
    }
}

/// A client-facing model name and its targets.
pub struct Route {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
}

/// Gateway keys and limits the request path checks.
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_attempts: u32,
    pub request_timeout: Duration,
}

/// The snapshot.
pub struct RoutingTable {
    pub providers: HashMap<String, Arc<Provider>>,
    pub routes: HashMap<String, Route>,
    /// Model ids in config order, for `/v1/models`.
    pub model_ids: Vec<String>,
    pub limits: Limits,
    /// (name, SHA-256 of the key) of the gateway keys; empty = no key required. Only the
    /// digest is kept, so a memory dump or a debug print cannot reveal a key.
    pub api_keys: Vec<(String, [u8; 32])>,
    /// Budgets of gateway keys, by key name.
    pub key_budgets: HashMap<String, Budget>,
    /// Bearer token the admin listener requires, when set.
    pub admin_token: Option<String>,
    /// Every configured endpoint once, in config order (probes, admin, metrics).
    pub endpoints: Vec<Arc<Endpoint>>,
    pub retry_budget: Arc<RetryBudget>,
    /// Active probe period.
    pub health_interval: Duration,
    breaker: BreakerPolicy,
    /// Prices: the built-in snapshot, the `price_catalog` file, then `pricing:` overrides.
    pub catalog: Arc<Catalog>,
}

/// Loads the price catalog a config asks for (`price_catalog` is relative to `config_dir`).
pub fn load_catalog(cfg: &Config, config_dir: &std::path::Path) -> Result<Catalog, String> {
    let mut catalog = Catalog::builtin();
    if let Some(file) = cfg.price_catalog.as_deref().filter(|f| !f.is_empty()) {
        let path = config_dir.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("price_catalog {}: {e}", path.display()))?;
        catalog
            .merge_litellm(&bytes)
            .map_err(|e| format!("price_catalog {}: {e}", path.display()))?;
    }
    catalog
        .apply_overrides(&cfg.pricing)
        .map_err(|e| format!("pricing: {e}"))?;
    Ok(catalog)
}

/// Retries always allowed per 10 s, whatever the traffic.
const RETRY_FLOOR: u64 = 10;

impl RoutingTable {
    /// Builds the table. `local_addrs` maps `mock` providers without a `base_url` to the
    /// loopback address of their in-process fake.
    ///
    /// Endpoint state (breakers, health, drain) and the retry budget of `previous` carry
    /// over for endpoints that still exist.
    pub fn build(
        cfg: &Config,
        local_addrs: &HashMap<String, SocketAddr>,
        previous: Option<&RoutingTable>,
        catalog: Catalog,
    ) -> Result<Self, String> {
        let breaker = BreakerPolicy {
            failure_threshold: cfg.circuit_breaker.failure_threshold.max(1),
            open_for: cfg.circuit_breaker.open_for.0,
            max_open_for: (cfg.circuit_breaker.open_for.0 * 10)
                .max(std::time::Duration::from_secs(300)),
            // The rate trip needs real volume: at least 20 outcomes, and more when the
            // consecutive threshold is set high (a user who allows many failures in a row
            // does not want a rate trip at a lower count).
            min_requests: cfg
                .circuit_breaker
                .failure_threshold
                .saturating_mul(4)
                .max(20),
            ..BreakerPolicy::default()
        };
        let mut providers = HashMap::new();
        for p in &cfg.providers {
            let url = match (&p.base_url, local_addrs.get(&p.name)) {
                (Some(u), _) => u.clone(),
                (None, Some(addr)) => format!("http://{addr}/v1"),
                (None, None) => providers::default_base_url(p)
                    .ok_or_else(|| format!("provider `{}` needs a base_url", p.name))?,
            };
            let base = BaseUrl::parse(&url).map_err(|e| format!("provider `{}`: {e}", p.name))?;
            let adapter = providers::build_adapter(p, &base)
                .map_err(|e| format!("provider `{}`: {e}", p.name))?;
            let provider = Provider {
                name: p.name.clone(),
                kind: p.kind,
                base,
                adapter,
                timeouts: p.timeouts.clone(),
                region: p.region.clone(),
                api_key: p
                    .api_key
                    .as_ref()
                    .map(|k| k.expose().to_owned())
                    .unwrap_or_default(),
                probe: p.probe.clone(),
                budget: p.budget.clone(),
                free_tier: p.free_tier.clone(),
            };
            providers.insert(p.name.clone(), Arc::new(provider));
        }
        let mut routes = HashMap::new();
        let mut model_ids = Vec::new();
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for m in &cfg.models {
            let mut targets = Vec::with_capacity(m.targets.len());
            for t in &m.targets {
                let provider = providers.get(&t.provider).ok_or_else(|| {
                    format!("model `{}`: unknown provider `{}`", m.name, t.provider)
                })?;
                let known = endpoints
                    .iter()
                    .find(|e| e.provider == t.provider && e.model == t.model)
                    .cloned();
                let endpoint = known.unwrap_or_else(|| {
                    let e = carry_over(previous, provider, &t.model, breaker);
                    endpoints.push(e.clone());
                    e
                });
                let price = catalog
                    .price(&provider.name, provider.kind.as_str(), &t.model)
                    .cloned()
                    .map(Arc::new);
                if price.is_none() {
                    crate::pricing::warn_unknown_once(&provider.name, &t.model);
                }
                targets.push(Target {
                    provider: provider.clone(),
                    model: t.model.clone(),
                    weight: t.weight.unwrap_or(1),
                    endpoint,
                    price,
                });
            }
            model_ids.push(m.name.clone());
            routes.insert(
                m.name.clone(),
                Route {
                    name: m.name.clone(),
                    strategy: m.strategy,
                    targets,
                },
            );
        }
        // Direct `provider/model` names for every configured target, listed after aliases.
        for m in &cfg.models {
            for t in &m.targets {
                let id = format!("{}/{}", t.provider, t.model);
                if !model_ids.contains(&id) {
                    model_ids.push(id);
                }
            }
        }
        Ok(RoutingTable {
            providers,
            routes,
            model_ids,
            limits: Limits {
                max_body_bytes: cfg.server.max_body_bytes.0,
                max_attempts: cfg.routing.max_attempts.max(1),
                request_timeout: cfg.routing.request_timeout.0,
            },
            api_keys: cfg
                .server
                .api_keys
                .iter()
                .map(|k| (k.name.clone(), key_digest(k.key.expose())))
                .collect(),
            key_budgets: cfg
                .server
                .api_keys
                .iter()
                .filter_map(|k| Some((k.name.clone(), k.budget.clone()?)))
                .collect(),
            admin_token: cfg
                .server
                .admin_token
                .as_ref()
                .filter(|t| !t.is_empty())
                .map(|t| t.expose().to_owned()),
            endpoints,
            retry_budget: match previous {
                Some(p) if p.retry_budget.ratio() == cfg.routing.retry_budget => {
                    p.retry_budget.clone()
                }
                _ => Arc::new(RetryBudget::new(cfg.routing.retry_budget, RETRY_FLOOR)),
            },
            health_interval: cfg.health_checks.interval.0,
            breaker,
            catalog: Arc::new(catalog),
        })
    }

    /// The endpoint state for (provider, model), if configured.
    pub fn endpoint(&self, provider: &str, model: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .iter()
            .find(|e| e.provider == provider && e.model == model)
    }

    /// The ordered targets for one request: an alias, or `provider/model` for any configured
    /// provider; `pinned` (the `x-llmux-provider` header) keeps only that provider's targets.
    ///
    /// Targets whose context window (from the catalog) cannot hold `prompt_tokens` are
    /// skipped; when none can, the answer is 400 `context_length_exceeded` before any call.
    pub fn plan(
        &self,
        model: &str,
        pinned: Option<&str>,
        prompt_tokens: u64,
        expected_output: u64,
    ) -> Result<Vec<Target>, GatewayError> {
        let mut targets = if let Some(route) = self.routes.get(model) {
            order(route, prompt_tokens, expected_output)
        } else if let Some((provider, upstream)) = model.split_once('/').and_then(|(p, m)| {
            self.providers
                .get(p)
                .map(|p| (p, m))
                .filter(|(_, m)| !m.is_empty())
        }) {
            let endpoint = self
                .endpoint(&provider.name, upstream)
                .cloned()
                .unwrap_or_else(|| {
                    // Not a configured endpoint: its state lives only for this request.
                    Arc::new(Endpoint::new(
                        &provider.name,
                        upstream,
                        provider.region.clone(),
                        self.breaker,
                    ))
                });
            let price = self
                .catalog
                .price(&provider.name, provider.kind.as_str(), upstream)
                .cloned()
                .map(Arc::new);
            vec![Target {
                provider: provider.clone(),
                model: upstream.to_owned(),
                weight: 1,
                endpoint,
                price,
            }]
        } else {
            return Err(GatewayError::ModelNotFound {
                model: model.to_owned(),
            });
        };
        if let Some(pin) = pinned {
            if !self.providers.contains_key(pin) {
                return Err(GatewayError::invalid(
                    format!("x-llmux-provider names an unknown provider `{pin}`"),
                    "x-llmux-provider",
                ));
            }
            targets.retain(|t| t.provider.name == pin);
            if targets.is_empty() {
                return Err(GatewayError::invalid(
                    format!("provider `{pin}` serves no target of model `{model}`"),
                    "x-llmux-provider",
                ));
            }
        }
        let fits = |t: &Target| {
            t.price
                .as_ref()
                .and_then(|p| p.context_window)
                .is_none_or(|w| prompt_tokens <= w)
        };
        if !targets.iter().any(fits) {
            let largest = targets
                .iter()
                .filter_map(|t| t.price.as_ref()?.context_window)
                .max()
                .unwrap_or(0);
            return Err(GatewayError::ContextLengthExceeded {
                message: format!(
                    "The prompt is about {prompt_tokens} tokens, more than the context window of every target of `{model}` (largest: {largest})"
                ),
            });
        }
        targets.retain(fits);
        // Skip open, cooling-down, unhealthy and drained endpoints without an attempt.
        let mut soonest: Option<Duration> = None;
        targets.retain(|t| match t.endpoint.unavailable_for() {
            None => true,
            Some(wait) => {
                let wait = if wait.is_zero() {
                    self.health_interval
                } else {
                    wait
                };
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                false
            }
        });
        if targets.is_empty() {
            return Err(GatewayError::NoHealthyEndpoint {
                model: model.to_owned(),
                retry_after_secs: soonest.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64),
            });
        }
        Ok(targets)
    }

    /// Finds the gateway key name for a presented bearer token (constant time per key).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Option<&str>, GatewayError> {
        if self.api_keys.is_empty() {
            return Ok(None);
        }
        let token = presented.ok_or(GatewayError::InvalidApiKey)?;
        let digest = key_digest(token);
        let mut found = None;
        for (name, key) in &self.api_keys {
            if constant_time_eq(key, &digest) {
                found = Some(name.as_str());
            }
        }
        found.map(Some).ok_or(GatewayError::InvalidApiKey)
    }
}

/// The endpoint's state from the previous table (same provider and model), or a new one.
fn carry_over(
    previous: Option<&RoutingTable>,
    provider: &Provider,
    model: &str,
    policy: BreakerPolicy,
) -> Arc<Endpoint> {
    match previous.and_then(|p| p.endpoint(&provider.name, model)) {
        Some(old) if p_policy_eq(previous, policy) => old.clone(),
        Some(old) => Arc::new(old.with_policy(policy)),
        None => Arc::new(Endpoint::new(
            &provider.name,
            model,
            provider.region.clone(),
            policy,
        )),
    }
}

fn p_policy_eq(previous: Option<&RoutingTable>, policy: BreakerPolicy) -> bool {
    previous.is_some_and(|p| p.breaker == policy)
}

/// SHA-256 of a gateway key.
fn key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// Constant-time comparison, so a wrong key's timing tells nothing of the right one.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Orders a route's targets by its strategy. `weighted` draws the order by weight;
/// strategies that need live statistics fall back to config order until stats exist.
fn order(route: &Route, prompt_tokens: u64, expected_output: u64) -> Vec<Target> {
    match route.strategy {
        Strategy::Fallback => route.targets.clone(),
        Strategy::Weighted => weighted_order(&route.targets),
        Strategy::LowestLatency => latency_order(&route.targets, prompt_tokens),
        Strategy::LowestCost => cost_order(&route.targets, prompt_tokens, expected_output),
    }
}

/// Share of `lowest_latency` requests that try another target first, so an endpoint that
/// was slow and recovered gets measured again.
const EXPLORE_SHARE: f64 = 0.02;

/// Lowest observed P95 first, in the request's prompt-size bucket. Endpoints with no
/// samples in that bucket yet sort first, so every endpoint gets measured in every bucket:
/// an endpoint measured only on long prompts would otherwise carry its long-prompt P95
/// into the short bucket and be tried there only by exploration. Ties keep config order.
fn latency_order(targets: &[Target], prompt_tokens: u64) -> Vec<Target> {
    let bucket = crate::stats::prompt_bucket(prompt_tokens);
    let mut v = targets.to_vec();
    v.sort_by_key(|t| {
        t.endpoint.stats.duration_window[bucket]
            .p95()
            .unwrap_or(Duration::ZERO)
    });
    if v.len() > 1 && fastrand::f64() < EXPLORE_SHARE {
        let explored = v.remove(fastrand::usize(1..v.len()));
        v.insert(0, explored);
    }
    v
}

/// Cheapest estimated request first (prompt tokens at the expected cache-hit rate, the
/// expected output), ties broken by latency; targets without a price go last.
fn cost_order(targets: &[Target], prompt_tokens: u64, expected_output: u64) -> Vec<Target> {
    let bucket = crate::stats::prompt_bucket(prompt_tokens);
    let mut keyed: Vec<(f64, Duration, Target)> = targets
        .iter()
        .map(|t| {
            let cost = t.price.as_deref().map_or(f64::INFINITY, |p| {
                crate::pricing::estimate(
                    p,
                    prompt_tokens,
                    expected_output,
                    t.endpoint.stats.cache_hit_rate(),
                )
            });
            let p95 = t.endpoint.stats.p95_for(bucket).unwrap_or(Duration::ZERO);
            (cost, p95, t.clone())
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, t)| t).collect()
}

fn weighted_order(targets: &[Target]) -> Vec<Target> {
    let mut pool: Vec<Target> = targets.to_vec();
    let mut out = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u64 = pool.iter().map(|t| u64::from(t.weight.max(1))).sum();
        let mut pick = fastrand::u64(0..total);
        let idx = pool
            .iter()
            .position(|t| {
                let w = u64::from(t.weight.max(1));
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        out.push(pool.remove(idx));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RoutingTable {
        let cfg: Config = serde_yaml::from_str(yaml).unwrap();
        RoutingTable::build(&cfg, &HashMap::new(), None, Catalog::builtin()).unwrap()
    }

    const YAML: &str = r#"
providers:
  - { name: a, kind: openai, base_url: "http://127.0.0.1:1/v1", api_key: k1 }
  - { name: b, kind: openai_compatible, base_url: "http://127.0.0.1:2/v1" }
models:
  - name: chat
    targets: [ { provider: a, model: m1 }, { provider: b, model: m2 } ]
  - name: w
    strategy: weighted
    targets: [ { provider: a, model: m1, weight: 3 }, { provider: b, model: m2, weight: 1 } ]
routing: { max_attempts: 2 }
server:
  api_keys: [ { name: team, key: secret-1 } ]
"#;

    #[test]
    fn plans_alias_direct_and_pinned() {
        let t = table(YAML);
        let plan = t.plan("chat", None, 10, 100).unwrap();
        assert_eq!(
            plan.iter().map(|t| t.model.as_str()).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        let plan = t.plan("b/some-model", None, 10, 100).unwrap();
        assert_eq!(
            (plan[0].provider.name.as_str(), plan[0].model.as_str()),
            ("b", "some-model")
        );
        let plan = t.plan("chat", Some("b"), 10, 100).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            t.plan("nope", None, 10, 100).unwrap_err().code(),
            "model_not_found"
        );
        assert_eq!(
            t.plan("zz/m", None, 10, 100).unwrap_err().code(),
            "model_not_found"
        );
        assert_eq!(
            t.plan("chat", Some("zz"), 10, 100).unwrap_err().status(),
            400
        );
        assert_eq!(t.model_ids, ["chat", "w", "a/m1", "b/m2"]);
    }

    #[test]
    fn weighted_order_follows_weights() {
        let t = table(YAML);
        let firsts = (0..2000)
            .filter(|_| t.plan("w", None, 10, 100).unwrap()[0].provider.name == "a")
            .count();
        assert!(
            (1300..1700).contains(&firsts),
            "a first {firsts}/2000 with weight 3:1"
        );
    }

    #[test]
    fn lowest_latency_measures_every_endpoint_in_every_prompt_size_bucket() {
        let t = table(
            r#"
providers:
  - { name: a, kind: openai, base_url: "http://127.0.0.1:1/v1", api_key: k1 }
  - { name: b, kind: openai, base_url: "http://127.0.0.1:2/v1", api_key: k2 }
models:
  - { name: fast, strategy: lowest_latency, targets: [ { provider: a, model: m }, { provider: b, model: m } ] }
"#,
        );
        let (short, long) = (100, 20_000);
        let first = |tokens| {
            // Exploration sends 2 % elsewhere: the usual first choice is the one most seen.
            let a = (0..200)
                .filter(|_| t.plan("fast", None, tokens, 100).unwrap()[0].provider.name == "a")
                .count();
            if a > 150 {
                "a"
            } else {
                "b"
            }
        };
        let plan = t.plan("fast", None, short, 100).unwrap();
        let window = |p: &str, tokens| {
            let target = plan.iter().find(|x| x.provider.name == p).unwrap();
            &target.endpoint.stats.duration_window[crate::stats::prompt_bucket(tokens)]
        };
        // A was measured on long prompts only, and slow there; B on both sizes.
        window("a", long).record(Duration::from_millis(400));
        window("b", short).record(Duration::from_millis(100));
        window("b", long).record(Duration::from_millis(100));
        assert_eq!(first(long), "b", "lower P95 in the long bucket");
        assert_eq!(
            first(short),
            "a",
            "A is unmeasured on short prompts: it goes first"
        );
        window("a", short).record(Duration::from_millis(10));
        assert_eq!(first(short), "a", "and stays first, being faster there");
        window("a", short).record(Duration::from_millis(900));
        window("a", short).record(Duration::from_millis(900));
        assert_eq!(first(short), "b", "until its short-prompt P95 passes B's");
    }

    #[test]
    fn gateway_keys() {
        let t = table(YAML);
        assert_eq!(t.authenticate(Some("secret-1")).unwrap(), Some("team"));
        assert!(t.authenticate(Some("secret-2")).is_err());
        assert!(t.authenticate(None).is_err());
    }
}
