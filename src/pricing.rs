//! Model prices and the USD cost of a request.
//!
//! The gateway reports `llmux_cost_usd_total`, `x-llmux-cost-usd` and budgets from these numbers,
//! so a model without a price is reported as *unknown* (never as free). Prices come from three
//! layers, each over the one before: the built-in snapshot below (docs/providers.md §12–§13),
//! a LiteLLM `model_prices_and_context_window.json` (`price_catalog:`) and per-model
//! overrides (`pricing:`). All prices are USD per 1M tokens.
//!
//! Costs are computed on the [`TokenCounts`] partition every adapter produces: uncached input,
//! output (reasoning included), cache reads and cache writes.

use crate::config::PriceOverride;
use crate::types::TokenCounts;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// USD per 1M tokens for one model, plus its limits.
///
/// Optional cache prices fall back when absent (see [`cost`]): a missing price never makes
/// tokens free.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Tokens read from a prompt cache; `None` = billed as input.
    pub cached_input: Option<f64>,
    /// Tokens written to a cache with the default (Anthropic 5-minute) lifetime; `None` = input.
    pub cache_write: Option<f64>,
    /// Tokens written to a 1-hour cache (Anthropic `ttl: "1h"`); `None` = `cache_write`.
    pub cache_write_1h: Option<f64>,
    /// Output tokens, reasoning included.
    pub output: f64,
    /// Above this many prompt tokens the whole request is priced at the long-context rates
    /// (Anthropic/Gemini style).
    pub long_context: Option<LongContext>,
    /// Most prompt tokens the model accepts; lets routing skip targets a prompt cannot fit.
    pub context_window: Option<u64>,
    /// Most output tokens the model produces in one response.
    pub max_output: Option<u64>,
}

/// The second price tier some models charge once a prompt is longer than `threshold` tokens.
///
/// A missing cache price here is the base cache price scaled by `input / base input` (the tier
/// raises every input-side rate by the same factor), or the tier's input price when the base
/// has none either.
#[derive(Debug, Clone, PartialEq)]
pub struct LongContext {
    /// Prompt tokens (input + cache reads + cache writes) above which the tier applies.
    pub threshold: u64,
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache reads.
    pub cached_input: Option<f64>,
    /// 5-minute cache writes.
    pub cache_write: Option<f64>,
}

/// Prices for every model llmux knows, looked up by (provider, kind, model).
///
/// Built once per config load: [`Catalog::builtin`], then [`Catalog::merge_litellm`] for
/// `price_catalog:`, then [`Catalog::apply_overrides`] for `pricing:`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Built-in and LiteLLM entries by model id (or LiteLLM key such as `gemini/gemini-2.5-pro`).
    entries: HashMap<String, Price>,
    /// `pricing:` entries, fully resolved, by their config key (`model` or `provider/model`).
    overrides: HashMap<String, Price>,
}

/// A long-context tier in the built-in table: (threshold, input, cached input, cache write, output).
type Tier = (u64, f64, Option<f64>, Option<f64>, f64);
/// One built-in row: model id, input, cached input, cache write 5m, cache write 1h, output,
/// context window, max output, long-context tier.
type Row = (
    &'static str,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    Option<u64>,
    Option<u64>,
    Option<Tier>,
);

/// The built-in snapshot: LiteLLM 1.110.2 map as summarised in docs/providers.md §12 (prices) and
/// §13 (windows). Rows marked † are not in §12's table and come from the same LiteLLM map.
#[rustfmt::skip]
const BUILTIN: &[Row] = &[
    // model id                      input   cached         write 5m       write 1h      output   context            max output      long-context tier (threshold, in, cached, write, out)
    // --- OpenAI (cached reads: 0.1x GPT-5 family, 0.25x GPT-4.1, 0.5x GPT-4o; writes billed from gpt-5.6 on)
    ("gpt-5.6",                      4.00,   Some(0.40),    Some(5.00),    None,         20.00,   Some(922_000),     Some(128_000),  Some((272_000, 8.00, Some(0.80), Some(10.00), 30.00))),
    ("gpt-5.6-sol",                  4.00,   Some(0.40),    Some(5.00),    None,         20.00,   Some(922_000),     Some(128_000),  Some((272_000, 8.00, Some(0.80), Some(10.00), 30.00))),
    ("gpt-5.6-terra",                2.00,   Some(0.20),    Some(2.50),    None,         12.00,   Some(922_000),     Some(128_000),  Some((272_000, 4.00, Some(0.40), Some(5.00), 18.00))),
    ("gpt-5.6-luna",                 0.20,   Some(0.02),    Some(0.25),    None,         1.20,    Some(922_000),     Some(128_000),  Some((272_000, 0.40, Some(0.04), Some(0.50), 1.80))),
    ("gpt-5.5",                      5.00,   Some(0.50),    None,          None,         30.00,   Some(1_050_000),   Some(128_000),  Some((272_000, 10.00, Some(1.00), None, 45.00))),
    ("gpt-5.5-pro",                  30.00,  None,          None,          None,         180.00,  Some(1_050_000),   Some(128_000),  Some((272_000, 60.00, None, None, 270.00))),
    ("gpt-5.4",                      2.50,   Some(0.25),    None,          None,         15.00,   Some(1_050_000),   Some(128_000),  Some((272_000, 5.00, Some(0.50), None, 22.50))),
    ("gpt-5.4-mini",                 0.75,   Some(0.075),   None,          None,         4.50,    Some(272_000),     Some(128_000),  None),
    ("gpt-5",                        1.25,   Some(0.125),   None,          None,         10.00,   Some(272_000),     Some(128_000),  None),
    ("gpt-5-mini",                   0.25,   Some(0.025),   None,          None,         2.00,    Some(272_000),     Some(128_000),  None), // †
    ("gpt-4.1",                      2.00,   Some(0.50),    None,          None,         8.00,    Some(1_047_576),   Some(32_768),   None),
    ("gpt-4o",                       2.50,   Some(1.25),    None,          None,         10.00,   Some(128_000),     Some(16_384),   None),
    ("gpt-4o-mini",                  0.15,   Some(0.075),   None,          None,         0.60,    Some(128_000),     Some(16_384),   None), // † (spec §3 example)
    // --- Anthropic (read 0.1x, write 5m 1.25x, write 1h 2x input)
    ("claude-opus-5",                5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-opus-4-8",              5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-opus-4-7",              5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-opus-4-6",              5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-opus-4-5",              5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(200_000),     Some(64_000),   None), // †
    ("claude-sonnet-5",              2.00,   Some(0.20),    Some(2.50),    Some(4.00),   10.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-sonnet-4-6",            3.00,   Some(0.30),    Some(3.75),    Some(6.00),   15.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-sonnet-4-5",            3.00,   Some(0.30),    Some(3.75),    Some(6.00),   15.00,   Some(200_000),     Some(64_000),   Some((200_000, 6.00, Some(0.60), Some(7.50), 22.50))),
    ("claude-haiku-4-5",             1.00,   Some(0.10),    Some(1.25),    Some(2.00),   5.00,    Some(200_000),     Some(64_000),   None),
    ("claude-fable-5",               10.00,  Some(1.00),    Some(12.50),   Some(20.00),  50.00,   Some(1_000_000),   Some(128_000),  None),
    ("claude-mythos-5",              10.00,  Some(1.00),    Some(12.50),   Some(20.00),  50.00,   Some(1_000_000),   Some(128_000),  None),
    // --- Bedrock (other anthropic.* ids resolve to the Anthropic rows above; Nova rows †)
    ("anthropic.claude-opus-4-8",    5.00,   Some(0.50),    Some(6.25),    Some(10.00),  25.00,   Some(1_000_000),   Some(128_000),  None),
    ("anthropic.claude-sonnet-4-6",  3.00,   Some(0.30),    Some(3.75),    Some(6.00),   15.00,   Some(1_000_000),   Some(64_000),   None),
    ("anthropic.claude-sonnet-4-5",  3.00,   Some(0.30),    Some(3.75),    Some(6.00),   15.00,   Some(200_000),     Some(64_000),   Some((200_000, 6.00, Some(0.60), Some(7.50), 22.50))),
    ("amazon.nova-premier-v1:0",     2.50,   Some(0.625),   None,          None,         12.50,   Some(1_000_000),   Some(10_000),   None),
    ("amazon.nova-pro-v1:0",         0.80,   Some(0.20),    None,          None,         3.20,    Some(300_000),     Some(10_000),   None),
    ("amazon.nova-lite-v1:0",        0.06,   Some(0.015),   None,          None,         0.24,    Some(300_000),     Some(10_000),   None),
    ("amazon.nova-micro-v1:0",       0.035,  Some(0.00875), None,          None,         0.14,    Some(128_000),     Some(10_000),   None),
    ("amazon.nova-2-lite-v1:0",      0.30,   Some(0.075),   None,          None,         2.50,    Some(1_000_000),   Some(64_000),   None),
    // --- Google Gemini (implicit cache reads ~0.1x; explicit-cache storage is billed outside a request)
    ("gemini-3.1-pro-preview",       2.00,   Some(0.20),    None,          None,         12.00,   Some(1_048_576),   Some(65_536),   Some((200_000, 4.00, Some(0.40), None, 18.00))),
    ("gemini-pro-latest",            2.00,   Some(0.20),    None,          None,         12.00,   Some(1_048_576),   Some(65_536),   Some((200_000, 4.00, Some(0.40), None, 18.00))),
    ("gemini-3.5-flash",             1.50,   Some(0.15),    None,          None,         9.00,    Some(1_048_576),   Some(65_536),   None),
    ("gemini-3.1-flash-lite",        0.25,   Some(0.025),   None,          None,         1.50,    Some(1_048_576),   Some(65_536),   None),
    ("gemini-2.5-pro",               1.25,   Some(0.125),   None,          None,         10.00,   Some(1_048_576),   Some(65_536),   Some((200_000, 2.50, Some(0.25), None, 15.00))),
    ("gemini-2.5-flash",             0.30,   Some(0.03),    None,          None,         2.50,    Some(1_048_576),   Some(65_536),   None),
    // --- Mistral (output shares the context window: no separate max)
    ("mistral-large-latest",         0.50,   Some(0.05),    None,          None,         1.50,    Some(262_144),     None,           None),
    ("mistral-large-2512",           0.50,   Some(0.05),    None,          None,         1.50,    Some(262_144),     None,           None),
    ("mistral-large-4",              0.70,   Some(0.07),    None,          None,         2.10,    Some(1_048_576),   None,           None),
    ("mistral-medium-3.5",           1.50,   Some(0.15),    None,          None,         7.50,    Some(262_144),     None,           None),
    ("mistral-small-latest",         0.15,   Some(0.015),   None,          None,         0.60,    Some(262_144),     None,           None), // †
    // --- DeepSeek (LiteLLM USD figures ≈ peak CNY price; no write surcharge and no writes reported)
    ("deepseek-v4-pro",              1.32,   Some(0.044),   None,          None,         3.96,    Some(1_000_000),   Some(393_216),  None),
    ("deepseek-v4-flash",            0.30,   Some(0.006),   None,          None,         1.20,    Some(1_000_000),   Some(393_216),  None),
    ("deepseek-flash",               0.30,   Some(0.006),   None,          None,         1.20,    Some(1_000_000),   Some(393_216),  None),
    // --- Alibaba Qwen (cached = implicit-cache price; explicit writes 1.25x)
    ("qwen3.8-max",                  2.00,   Some(0.25),    None,          None,         6.00,    Some(991_808),     Some(131_072),  None),
    ("qwen3.7-max",                  2.50,   Some(0.50),    Some(3.125),   None,         7.50,    Some(991_808),     Some(65_536),   None),
    ("qwen3.8-flash",                0.15,   Some(0.016),   Some(0.20),    None,         0.47,    Some(991_808),     Some(131_072),  None),
];

/// A built-in row as a catalog entry.
fn row_price(row: &Row) -> (String, Price) {
    let (
        id,
        input,
        cached_input,
        cache_write,
        cache_write_1h,
        output,
        context_window,
        max_output,
        tier,
    ) = *row;
    // Tier tuple: (threshold, input, cached input, cache write, output).
    let long_context = tier.map(|t| LongContext {
        threshold: t.0,
        input: t.1,
        cached_input: t.2,
        cache_write: t.3,
        output: t.4,
    });
    let price = Price {
        input,
        cached_input,
        cache_write,
        cache_write_1h,
        output,
        long_context,
        context_window,
        max_output,
    };
    (id.to_string(), price)
}

/// Bedrock cross-region inference-profile prefixes (`us.anthropic.claude-…`).
const GEO_PREFIXES: &[&str] = &[
    "us", "eu", "apac", "ap", "global", "jp", "au", "ca", "us-gov",
];
/// Bedrock vendor prefixes whose bare model ids also exist under their own provider.
const VENDOR_PREFIXES: &[&str] = &["anthropic", "mistral", "deepseek", "qwen", "openai"];
/// LiteLLM `mode`s priced here: llmux serves chat; `responses` covers chat models OpenAI only
/// lists under the Responses API (gpt-5.5-pro).
const CHAT_MODES: &[&str] = &["chat", "responses"];

impl Catalog {
    /// The built-in snapshot (docs/providers.md §12–§13) for the models of every supported
    /// provider, so cost works with no `price_catalog:` file.
    pub fn builtin() -> Catalog {
        let entries = BUILTIN.iter().map(row_price).collect();
        Catalog {
            entries,
            overrides: HashMap::new(),
        }
    }

    /// Number of catalog entries (built-in plus loaded; overrides not counted), for startup logs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the catalog has no entries (every cost would be unknown).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Loads a LiteLLM `model_prices_and_context_window.json` over this catalog (its entries
    /// win), so operators can refresh prices without a new llmux release.
    ///
    /// Reads `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
    /// `cache_creation_input_token_cost`, `cache_creation_input_token_cost_above_1hr`, the
    /// `*_above_<N>k_tokens` tier (the lowest `N` when there are several), `max_input_tokens`,
    /// `max_output_tokens` and `litellm_provider`. Skips `sample_spec`, entries whose `mode` is
    /// not a chat mode (or missing), and entries without an input and an output price. Any
    /// malformed field is an error naming the entry and field, and then nothing is loaded.
    /// Returns how many entries were loaded.
    pub fn merge_litellm(&mut self, json: &[u8]) -> Result<usize, String> {
        let doc: Value = serde_json::from_slice(json)
            .map_err(|e| format!("price catalog is not valid JSON: {e}"))?;
        let Value::Object(doc) = doc else {
            return Err("price catalog: expected a JSON object of model entries".to_string());
        };
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for (key, entry) in &doc {
            if key == "sample_spec" {
                continue;
            }
            match parse_litellm_entry(key, entry) {
                Ok(Some(price)) => loaded.push((key.clone(), price)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(join_errors(&errors));
        }
        let count = loaded.len();
        self.entries.extend(loaded);
        Ok(count)
    }

    /// Applies `pricing:` overrides (keys: upstream model, or `provider/model` for one provider
    /// only) so operators can correct or add prices (negotiated rates, self-hosted models).
    ///
    /// Fields not given keep the catalog's value (the price `key` resolves to, date suffixes
    /// removed); a key the catalog does not know needs `input` and `output`. Overriding any
    /// price drops the catalog's long-context tier, so the configured rates are what is charged;
    /// overriding only the windows keeps it. Every problem is reported; on error nothing changes.
    pub fn apply_overrides(
        &mut self,
        overrides: &BTreeMap<String, PriceOverride>,
    ) -> Result<(), String> {
        let mut resolved = Vec::new();
        let mut errors = Vec::new();
        for (key, o) in overrides {
            match self.resolve_override(key, o) {
                Ok(price) => resolved.push((key.clone(), price)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(join_errors(&errors));
        }
        self.overrides.extend(resolved);
        Ok(())
    }

    /// The price of `model` as served by provider `provider` (a configured provider name) of
    /// kind `kind` (`openai`, `anthropic`, `gemini`, `bedrock`, …); `None` = unknown, which the
    /// caller reports as unknown cost, never 0.
    ///
    /// Lookup order, each step tried on the model id and then on the id with prefixes and
    /// date/version suffixes removed (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`,
    /// `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`, `models/gemini-2.5-flash` →
    /// `gemini-2.5-flash`, `us.anthropic.claude-…-v1:0` → `anthropic.claude-…` → `claude-…`):
    /// 1. a `provider/model` override; 2. a `model` override;
    /// 3. the catalog: exact id, then the LiteLLM-style `kind/model` key (`gemini/…`,
    ///    `dashscope/…` for qwen, `azure/…` for azure_openai), then `provider/model` (a provider
    ///    named after its LiteLLM prefix, e.g. `xai`).
    pub fn price(&self, provider: &str, kind: &str, model: &str) -> Option<&Price> {
        let names = candidates(model);
        let mut key = String::new();
        for name in &names {
            if let Some(p) = self.overrides.get(joined(&mut key, provider, name)) {
                return Some(p);
            }
        }
        if let Some(p) = names
            .iter()
            .find_map(|name| self.overrides.get(name.as_str()))
        {
            return Some(p);
        }
        let prefix = litellm_prefix(kind);
        for name in &names {
            if let Some(p) = self.entries.get(name.as_str()) {
                return Some(p);
            }
            if let Some(p) = self.entries.get(joined(&mut key, prefix, name)) {
                return Some(p);
            }
            if let Some(p) = self.entries.get(joined(&mut key, provider, name)) {
                return Some(p);
            }
        }
        None
    }

    /// The catalog price an override key starts from: the key itself, its normalised forms, and
    /// for `provider/model` keys the model part's.
    fn override_base(&self, key: &str) -> Option<&Price> {
        let mut names = candidates(key);
        if let Some((_, model)) = key.split_once('/') {
            names.extend(candidates(model));
        }
        names
            .iter()
            .find_map(|name| self.entries.get(name.as_str()))
    }

    fn resolve_override(&self, key: &str, o: &PriceOverride) -> Result<Price, String> {
        let fields = [
            ("input", o.input),
            ("cached_input", o.cached_input),
            ("cache_write", o.cache_write),
            ("cache_write_1h", o.cache_write_1h),
            ("output", o.output),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "pricing.{key}.{field}: expected a non-negative number of USD per 1M tokens, got {v}"
                    ));
                }
            }
        }
        let price_overridden = fields.iter().any(|(_, v)| v.is_some());
        let mut price = match self.override_base(key) {
            Some(base) => base.clone(),
            None => {
                let (Some(input), Some(output)) = (o.input, o.output) else {
                    let missing = if o.input.is_none() { "input" } else { "output" };
                    return Err(format!(
                        "pricing.{key}: not in the price catalog, so `{missing}` is required (input and output, USD per 1M tokens)"
                    ));
                };
                Price {
                    input,
                    cached_input: None,
                    cache_write: None,
                    cache_write_1h: None,
                    output,
                    long_context: None,
                    context_window: None,
                    max_output: None,
                }
            }
        };
        if price_overridden {
            price.long_context = None;
        }
        price.input = o.input.unwrap_or(price.input);
        price.output = o.output.unwrap_or(price.output);
        price.cached_input = o.cached_input.or(price.cached_input);
        price.cache_write = o.cache_write.or(price.cache_write);
        price.cache_write_1h = o.cache_write_1h.or(price.cache_write_1h);
        price.context_window = o.context_window.or(price.context_window);
        price.max_output = o.max_output.or(price.max_output);
        Ok(price)
    }
}

/// `a/b` in a reused buffer (lookups run on every request).
fn joined<'a>(buf: &'a mut String, a: &str, b: &str) -> &'a str {
    buf.clear();
    buf.push_str(a);
    buf.push('/');
    buf.push_str(b);
    buf
}

/// The key prefix LiteLLM uses for a provider kind.
fn litellm_prefix(kind: &str) -> &str {
    match kind {
        "qwen" => "dashscope",
        "azure_openai" => "azure",
        other => other,
    }
}

/// The model id, then forms of it with deployment prefixes and version suffixes removed, most
/// specific first.
fn candidates(model: &str) -> Vec<String> {
    fn push(out: &mut Vec<String>, s: &str) {
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    let mut out: Vec<String> = vec![model.to_string()];
    let mut s = model;
    // Bedrock ARN (…:inference-profile/us.anthropic.claude-…): the id is the last segment.
    if s.starts_with("arn:") {
        if let Some((_, id)) = s.rsplit_once('/') {
            s = id;
            push(&mut out, s);
        }
    }
    if let Some(rest) = s.strip_prefix("models/") {
        s = rest;
        push(&mut out, s);
    }
    if let Some((geo, rest)) = s.split_once('.') {
        if GEO_PREFIXES.contains(&geo) && !rest.is_empty() {
            s = rest;
            push(&mut out, s);
        }
    }
    let mut stripped = vec![s];
    while let Some(next) = strip_version(s) {
        s = next;
        stripped.push(s);
    }
    for form in &stripped {
        push(&mut out, form);
    }
    for form in &stripped {
        if let Some((vendor, rest)) = form.split_once('.') {
            if VENDOR_PREFIXES.contains(&vendor) {
                push(&mut out, rest);
            }
        }
    }
    out
}

/// Removes one trailing version/date marker: `:0`, `-v1`, `@20250929`, `-20250929`,
/// `-2024-07-18`, `-001`.
fn strip_version(s: &str) -> Option<&str> {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    if let Some((head, tail)) = s.rsplit_once(':') {
        if digits(tail) {
            return Some(head);
        }
    }
    // Vertex AI style `claude-sonnet-4-5@20250929`.
    if let Some((head, _)) = s.rsplit_once('@') {
        if !head.is_empty() {
            return Some(head);
        }
    }
    let (head, tail) = s.rsplit_once('-')?;
    if head.is_empty() {
        return None;
    }
    if let Some(v) = tail.strip_prefix('v') {
        if digits(v) {
            return Some(head);
        }
    }
    if digits(tail) && (tail.len() == 8 || tail.len() == 3) {
        return Some(head);
    }
    // -YYYY-MM-DD (OpenAI snapshots).
    let cut = s.len().checked_sub(11)?;
    let (head, date) = (s.get(..cut)?, s.get(cut..)?);
    let d = date.as_bytes();
    let dated = !head.is_empty()
        && d[0] == b'-'
        && d[5] == b'-'
        && d[8] == b'-'
        && [&d[1..5], &d[6..8], &d[9..11]]
            .iter()
            .all(|part| part.iter().all(u8::is_ascii_digit));
    dated.then_some(head)
}

/// One LiteLLM entry: `Ok(None)` when it is skipped (not a chat model, no token prices).
fn parse_litellm_entry(key: &str, entry: &Value) -> Result<Option<Price>, String> {
    let Value::Object(obj) = entry else {
        return Err(format!(
            "price catalog entry {key:?}: expected an object, got {}",
            kind_of(entry)
        ));
    };
    match obj.get("mode") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) if CHAT_MODES.contains(&mode.as_str()) => {}
        Some(Value::String(_)) => return Ok(None),
        Some(other) => {
            return Err(format!(
                "price catalog entry {key:?}: field mode: expected a string, got {}",
                kind_of(other)
            ))
        }
    }
    match obj.get("litellm_provider") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "price catalog entry {key:?}: field litellm_provider: expected a string, got {}",
                kind_of(other)
            ))
        }
    }
    let input = per_million(key, obj, "input_cost_per_token")?;
    let output = per_million(key, obj, "output_cost_per_token")?;
    let cached_input = per_million(key, obj, "cache_read_input_token_cost")?;
    let cache_write = per_million(key, obj, "cache_creation_input_token_cost")?;
    let cache_write_1h = per_million(key, obj, "cache_creation_input_token_cost_above_1hr")?;
    let context_window = token_count(key, obj, "max_input_tokens")?;
    let max_output = token_count(key, obj, "max_output_tokens")?;
    let (Some(input), Some(output)) = (input, output) else {
        return Ok(None);
    };
    let mut threshold_k: Option<u64> = None;
    for field in obj.keys() {
        let Some(n) = field
            .strip_prefix("input_cost_per_token_above_")
            .and_then(|rest| rest.strip_suffix("k_tokens"))
        else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue; // another LiteLLM variant (`…_above_272k_tokens_priority` never gets here)
        }
        let k = n
            .parse::<u64>()
            .ok()
            .filter(|k| k.checked_mul(1000).is_some())
            .ok_or_else(|| {
                format!("price catalog entry {key:?}: field {field}: threshold out of range")
            })?;
        threshold_k = Some(threshold_k.map_or(k, |t| t.min(k)));
    }
    let long_context = match threshold_k {
        None => None,
        Some(k) => {
            let sfx = format!("_above_{k}k_tokens");
            let tier_input = per_million(key, obj, &format!("input_cost_per_token{sfx}"))?;
            let tier_output = per_million(key, obj, &format!("output_cost_per_token{sfx}"))?;
            let tier_cached = per_million(key, obj, &format!("cache_read_input_token_cost{sfx}"))?;
            let tier_write =
                per_million(key, obj, &format!("cache_creation_input_token_cost{sfx}"))?;
            tier_input.map(|tier_input| LongContext {
                threshold: k * 1000,
                input: tier_input,
                output: tier_output.unwrap_or(output),
                cached_input: tier_cached,
                cache_write: tier_write,
            })
        }
    };
    Ok(Some(Price {
        input,
        cached_input,
        cache_write,
        cache_write_1h,
        output,
        long_context,
        context_window,
        max_output,
    }))
}

/// A LiteLLM per-token USD field as USD per 1M tokens (rounded to 1e-9 to drop float noise).
fn per_million(key: &str, obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    let v = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let per_token = v.as_f64().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
        format!(
            "price catalog entry {key:?}: field {field}: expected a non-negative number (USD per token), got {}",
            kind_of(v)
        )
    })?;
    let per_m = (per_token * 1e15).round() / 1e9;
    if !per_m.is_finite() {
        return Err(format!(
            "price catalog entry {key:?}: field {field}: out of range"
        ));
    }
    Ok(Some(per_m))
}

/// A LiteLLM token-count field (`max_input_tokens`, `max_output_tokens`).
fn token_count(key: &str, obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    let v = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 => {
            Ok(Some(x as u64))
        }
        _ => Err(format!(
            "price catalog entry {key:?}: field {field}: expected a whole number of tokens, got {}",
            kind_of(v)
        )),
    }
}

/// A short description of a JSON value for error messages (never the whole value).
fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            format!("the string {short:?}")
        }
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Up to 5 errors on one line each, then how many more.
fn join_errors(errors: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = errors
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if errors.len() > SHOWN {
        let _ = write!(out, "\n(and {} more)", errors.len() - SHOWN);
    }
    out
}

/// The per-1M rates that apply to one request.
struct Rates {
    input: f64,
    cached: f64,
    write: f64,
    write_1h: f64,
    output: f64,
}

impl Rates {
    /// Base or long-context rates for a prompt of `prompt_tokens`, with every fallback applied.
    fn at(price: &Price, prompt_tokens: u64) -> Rates {
        let input = price.input;
        let write = price.cache_write.unwrap_or(input);
        let base = Rates {
            input,
            cached: price.cached_input.unwrap_or(input),
            write,
            write_1h: price.cache_write_1h.unwrap_or(write),
            output: price.output,
        };
        let Some(lc) = price
            .long_context
            .as_ref()
            .filter(|lc| prompt_tokens > lc.threshold)
        else {
            return base;
        };
        let scale = if price.input > 0.0 {
            lc.input / price.input
        } else {
            1.0
        };
        let write = lc
            .cache_write
            .or(price.cache_write.map(|w| w * scale))
            .unwrap_or(lc.input);
        Rates {
            input: lc.input,
            cached: lc
                .cached_input
                .or(price.cached_input.map(|c| c * scale))
                .unwrap_or(lc.input),
            write,
            write_1h: price.cache_write_1h.map(|w| w * scale).unwrap_or(write),
            output: lc.output,
        }
    }
}

/// USD for one request, for `llmux_cost_usd_total`, `x-llmux-cost-usd` and budgets.
///
/// `prompt_tokens` (input + cache_read + cache_write) decides the long-context tier.
/// `cache_write` tokens are priced at `cache_write` (5-minute) unless `cache_write_1h_tokens`
/// says how many were 1-hour writes (capped at `cache_write`). A missing `cached_input` or
/// `cache_write` price is the input price, a missing `cache_write_1h` the `cache_write` price:
/// never 0.
pub fn cost(price: &Price, tokens: &TokenCounts, cache_write_1h_tokens: u64) -> f64 {
    let prompt = tokens
        .input
        .saturating_add(tokens.cache_read)
        .saturating_add(tokens.cache_write);
    let r = Rates::at(price, prompt);
    let write_1h = cache_write_1h_tokens.min(tokens.cache_write);
    let write_5m = tokens.cache_write - write_1h;
    (tokens.input as f64 * r.input
        + tokens.cache_read as f64 * r.cached
        + write_5m as f64 * r.write
        + write_1h as f64 * r.write_1h
        + tokens.output as f64 * r.output)
        / 1e6
}

/// Estimated USD of a request before it is sent, for the `lowest_cost` strategy: `prompt_tokens`
/// of which `cache_hit_fraction` (clamped to 0..=1) are expected cache reads, plus
/// `expected_output` output tokens. Cache writes are not predicted.
pub fn estimate(
    price: &Price,
    prompt_tokens: u64,
    expected_output: u64,
    cache_hit_fraction: f64,
) -> f64 {
    let hit = if cache_hit_fraction.is_finite() {
        cache_hit_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let r = Rates::at(price, prompt_tokens);
    let prompt = prompt_tokens as f64;
    (prompt * (1.0 - hit) * r.input + prompt * hit * r.cached + expected_output as f64 * r.output)
        / 1e6
}

/// Most distinct (provider, model) pairs remembered by [`warn_unknown_once`]: client-chosen
/// `provider/model` names must not grow memory without bound.
const UNKNOWN_REMEMBERED: usize = 1024;
/// Longest provider/model key remembered or logged, in characters.
const UNKNOWN_KEY_CHARS: usize = 200;

/// Logs "unknown price for provider/model" once per (provider, model) for the process lifetime,
/// so a model missing from the catalog is visible without a log line per request. Remembers at
/// most 1024 pairs; past that it says once that further warnings are suppressed.
pub fn warn_unknown_once(provider: &str, model: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    static FULL: AtomicBool = AtomicBool::new(false);
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    match first_sighting(seen, UNKNOWN_REMEMBERED, provider, model) {
        Sighting::First(key) => log::warn!(
            "unknown price for {}: its cost is reported as unknown; add it under `pricing:` or `price_catalog:`",
            key.escape_debug()
        ),
        Sighting::Full => {
            if !FULL.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "more than {UNKNOWN_REMEMBERED} models without a price; further unknown-price warnings are suppressed"
                );
            }
        }
        Sighting::Again => {}
    }
}

/// What [`first_sighting`] found.
#[derive(Debug, PartialEq)]
enum Sighting {
    /// Not seen before: log it (the bounded `provider/model` key).
    First(String),
    /// Seen before.
    Again,
    /// Not seen, but the set is full.
    Full,
}

fn first_sighting(
    seen: &Mutex<HashSet<String>>,
    cap: usize,
    provider: &str,
    model: &str,
) -> Sighting {
    let key: String = format!("{provider}/{model}")
        .chars()
        .take(UNKNOWN_KEY_CHARS)
        .collect();
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.contains(&key) {
        Sighting::Again
    } else if seen.len() >= cap {
        Sighting::Full
    } else {
        seen.insert(key.clone());
        Sighting::First(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../tests/fixtures/pricing/litellm_sample.json");
    const MALFORMED: &[u8] = include_bytes!("../tests/fixtures/pricing/litellm_malformed.json");

    fn tokens(input: u64, cache_read: u64, cache_write: u64, output: u64) -> TokenCounts {
        TokenCounts {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    fn over(input: Option<f64>, output: Option<f64>) -> PriceOverride {
        PriceOverride {
            input,
            output,
            ..PriceOverride::default()
        }
    }

    fn assert_close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() < 1e-9, "{what}: got {got}, want {want}");
    }

    /// The catalog the cost table runs against: built-in + the LiteLLM fixture + two overrides.
    fn table_catalog() -> Catalog {
        let mut c = Catalog::builtin();
        assert_eq!(c.merge_litellm(SAMPLE), Ok(5));
        let mut o = BTreeMap::new();
        o.insert("gpt-4.1-mini".to_string(), over(Some(0.40), Some(1.60)));
        o.insert(
            "vllm/llama-3.1-8b".to_string(),
            over(Some(0.05), Some(0.10)),
        );
        c.apply_overrides(&o).unwrap();
        c
    }

    #[test]
    fn cost_table() {
        let c = table_catalog();
        // (case, provider, kind, model, tokens(input, cache_read, cache_write, output), 1h writes, USD)
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, &str, TokenCounts, u64, f64)] = &[
            // 1000*0.15 + 500*0.60 = 150 + 300 = 450 → 0.000450
            ("openai gpt-4o-mini plain", "openai", "openai", "gpt-4o-mini", tokens(1000, 0, 0, 500), 0, 450e-6),
            // 4o generation, reads 0.5x: 976*2.50 + 1024*1.25 + 100*10 = 2440 + 1280 + 1000 = 4720
            ("openai gpt-4o cached 50%", "openai", "openai", "gpt-4o", tokens(976, 1024, 0, 100), 0, 4720e-6),
            // 4.1, reads 0.25x: 1000*2 + 3000*0.5 + 200*8 = 2000 + 1500 + 1600 = 5100
            ("openai gpt-4.1 cached 75%", "openai", "openai", "gpt-4.1", tokens(1000, 3000, 0, 200), 0, 5100e-6),
            // GPT-5, reads 0.1x: 500*1.25 + 10000*0.125 + 2000*10 = 625 + 1250 + 20000 = 21875
            ("openai gpt-5 cached 90%", "openai", "openai", "gpt-5", tokens(500, 10_000, 0, 2000), 0, 21_875e-6),
            // output 3000 of which 2500 reasoning, all at the output price: 1200*0.75 + 3000*4.5 = 900 + 13500
            ("openai reasoning in output", "openai", "openai", "gpt-5.4-mini", tokens(1200, 0, 0, 3000), 0, 14_400e-6),
            // gpt-5.6 bills writes 1.25x: 1000*4 + 5000*0.4 + 2000*5 + 100*20 = 4000 + 2000 + 10000 + 2000
            ("openai gpt-5.6 cache write", "openai", "openai", "gpt-5.6", tokens(1000, 5000, 2000, 100), 0, 18_000e-6),
            // prompt 300000 > 272K: 250000*8 + 50000*0.8 + 1000*30 = 2,000,000 + 40,000 + 30,000
            ("openai gpt-5.6 above 272K", "openai", "openai", "gpt-5.6", tokens(250_000, 50_000, 0, 1000), 0, 2.07),
            // no cached price → input price: 1000 reads * 30 = 30000
            ("openai gpt-5.5-pro read without price", "openai", "openai", "gpt-5.5-pro", tokens(0, 1000, 0, 0), 0, 30_000e-6),
            // 100*3 + 20000*0.30 + 5000*3.75 + 800*15 = 300 + 6000 + 18750 + 12000 = 37050
            ("anthropic 5m writes and reads", "anthropic", "anthropic", "claude-sonnet-4-6", tokens(100, 20_000, 5000, 800), 0, 37_050e-6),
            // all writes 1h (2x): 50*1 + 4096*2 + 100*5 = 50 + 8192 + 500 = 8742
            ("anthropic 1h writes", "anthropic", "anthropic", "claude-haiku-4-5", tokens(50, 0, 4096, 100), 4096, 8742e-6),
            // 3000 writes, 1000 of them 1h: 10*5 + 8000*0.5 + 2000*6.25 + 1000*10 + 300*25
            //   = 50 + 4000 + 12500 + 10000 + 7500 = 34050
            ("anthropic mixed 5m/1h", "anthropic", "anthropic", "claude-opus-4-8", tokens(10, 8000, 3000, 300), 1000, 34_050e-6),
            // prompt 150000+60000 = 210000 > 200K: 150000*6 + 60000*0.6 + 1000*22.5 = 900000 + 36000 + 22500
            ("anthropic sonnet-4-5 above 200K", "anthropic", "anthropic", "claude-sonnet-4-5", tokens(150_000, 60_000, 0, 1000), 0, 0.9585),
            // prompt exactly 200000 is not above: 200000*3 + 1000*15 = 600000 + 15000
            ("anthropic sonnet-4-5 at 200K", "anthropic", "anthropic", "claude-sonnet-4-5", tokens(200_000, 0, 0, 1000), 0, 0.615),
            // promptTokenCount 5000 with cachedContentTokenCount 4000; output = 200 candidates + 800 thoughts:
            //   1000*0.30 + 4000*0.03 + 1000*2.5 = 300 + 120 + 2500 = 2920
            ("gemini cached + thinking", "gemini", "gemini", "gemini-2.5-flash", tokens(1000, 4000, 0, 1000), 0, 2920e-6),
            // prompt 250000 > 200K: 200000*2.5 + 50000*0.25 + 2000*15 = 500000 + 12500 + 30000
            ("gemini 2.5 pro above 200K", "gemini", "gemini", "models/gemini-2.5-pro", tokens(200_000, 50_000, 0, 2000), 0, 0.5425),
            // prompt_cache_hit 1280, miss 10: 10*0.30 + 1280*0.006 + 30*1.2 = 3 + 7.68 + 36 = 46.68
            ("deepseek cache hits", "deepseek", "deepseek", "deepseek-v4-flash", tokens(10, 1280, 0, 30), 0, 46.68e-6),
            // 10000*0.5 + 2000*0.05 + 1500*1.5 = 5000 + 100 + 2250 = 7350
            ("mistral large", "mistral", "mistral", "mistral-large-latest", tokens(10_000, 2000, 0, 1500), 0, 7350e-6),
            // 1000*2.5 + 4000*0.5 + 2000*3.125 + 500*7.5 = 2500 + 2000 + 6250 + 3750 = 14500
            ("qwen 3.7 max explicit cache", "qwen", "qwen", "qwen3.7-max", tokens(1000, 4000, 2000, 500), 0, 14_500e-6),
            // → claude-haiku-4-5: 2000*1 + 3000*0.1 + 1000*1.25 + 400*5 = 2000 + 300 + 1250 + 2000 = 5550
            ("bedrock claude id", "bedrock", "bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0", tokens(2000, 3000, 1000, 400), 0, 5550e-6),
            // Nova Pro: 10000*0.8 + 10000*0.2 + 1000*3.2 = 8000 + 2000 + 3200 = 13200
            ("bedrock nova", "bedrock", "bedrock", "us.amazon.nova-pro-v1:0", tokens(10_000, 10_000, 0, 1000), 0, 13_200e-6),
            // fixture xai/grok-4.3 via provider named xai: 1000*1.25 + 1000*0.2 + 1000*2.5 = 1250 + 200 + 2500
            ("litellm-loaded model", "xai", "openai_compatible", "grok-4.3", tokens(1000, 1000, 0, 1000), 0, 3950e-6),
            // fixture's exact regional entry (us. = +10%), prompt 210000 > 200K, 10000 of 20000 writes 1h:
            //   190000*6.6 + 10000*8.25 + 10000*(6.6*2 = 13.2) + 1000*24.75
            //   = 1,254,000 + 82,500 + 132,000 + 24,750 = 1,493,250
            ("litellm bedrock long tier + 1h", "bedrock", "bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", tokens(190_000, 0, 20_000, 1000), 10_000, 1.49325),
            // override of a model not built in: 1000*0.40 + 1000*1.60 = 400 + 1600 = 2000
            ("override new model", "openai", "openai", "gpt-4.1-mini", tokens(1000, 0, 0, 1000), 0, 2000e-6),
            // provider-scoped override of a self-hosted model: 100000*0.05 + 10000*0.10 = 5000 + 1000
            ("override provider/model", "vllm", "openai_compatible", "llama-3.1-8b", tokens(100_000, 0, 0, 10_000), 0, 6000e-6),
        ];
        assert!(cases.len() >= 15);
        for (name, provider, kind, model, t, w1h, want) in cases {
            let price = c
                .price(provider, kind, model)
                .unwrap_or_else(|| panic!("{name}: no price for {provider}/{model}"));
            assert_close(cost(price, t, *w1h), *want, name);
        }
        // Unknown model → None (the caller reports unknown cost, never 0).
        assert_eq!(c.price("openai", "openai", "gpt-unknown-9"), None);
        assert_eq!(c.price("other", "openai_compatible", "llama-3.1-8b"), None);
    }

    #[test]
    fn cost_fallbacks_never_zero() {
        let p = Price {
            input: 2.0,
            cached_input: None,
            cache_write: None,
            cache_write_1h: None,
            output: 4.0,
            long_context: None,
            context_window: None,
            max_output: None,
        };
        // reads, 5m writes and 1h writes all at input: (1000 + 1000 + 1000) * 2 = 6000
        assert_close(
            cost(&p, &tokens(0, 1000, 2000, 0), 1000),
            6000e-6,
            "fallbacks",
        );
        // 1h tokens beyond cache_write are capped: 500 writes, all 1h, at input 2 = 1000
        assert_close(cost(&p, &tokens(0, 0, 500, 0), 9999), 1000e-6, "1h capped");
        // cache_write_1h missing → cache_write: 1000 * 3 = 3000
        let p2 = Price {
            cache_write: Some(3.0),
            ..p.clone()
        };
        assert_close(cost(&p2, &tokens(0, 0, 1000, 0), 1000), 3000e-6, "1h → 5m");
        // Long tier without cache prices: scaled base (0.3 * 6/3 = 0.6) or tier input when base has none.
        let p3 = Price {
            input: 3.0,
            cached_input: Some(0.3),
            cache_write: None,
            cache_write_1h: None,
            output: 15.0,
            long_context: Some(LongContext {
                threshold: 10,
                input: 6.0,
                output: 22.5,
                cached_input: None,
                cache_write: None,
            }),
            context_window: None,
            max_output: None,
        };
        // 10*6 + 10*0.6 + 10*6 (write → tier input) = 60 + 6 + 60 = 126
        assert_close(
            cost(&p3, &tokens(10, 10, 10, 0), 0),
            126e-6,
            "tier fallbacks",
        );
        // Huge counts do not panic.
        let huge = cost(
            &p3,
            &tokens(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            u64::MAX,
        );
        assert!(huge.is_finite() && huge > 0.0);
    }

    #[test]
    fn estimate_uses_hit_fraction_and_tier() {
        let c = Catalog::builtin();
        let mini = c.price("openai", "openai", "gpt-4o-mini").unwrap();
        // 10000 prompt, 30% hits: 7000*0.15 + 3000*0.075 + 500*0.6 = 1050 + 225 + 300 = 1575
        assert_close(estimate(mini, 10_000, 500, 0.3), 1575e-6, "estimate");
        // fraction clamped / NaN → 0: 10000*0.15 + 500*0.6 = 1500 + 300
        assert_close(estimate(mini, 10_000, 500, f64::NAN), 1800e-6, "nan");
        assert_close(estimate(mini, 10_000, 500, -1.0), 1800e-6, "negative");
        // 1.5 → 1: 10000*0.075 + 300 = 750 + 300
        assert_close(estimate(mini, 10_000, 500, 1.5), 1050e-6, "over 1");
        let pro = c.price("gemini", "gemini", "gemini-2.5-pro").unwrap();
        // 300000 > 200K, no hits: 300000*2.5 + 1000*15 = 750000 + 15000
        assert_close(estimate(pro, 300_000, 1000, 0.0), 0.765, "tier");
    }

    #[test]
    fn merge_litellm_fixture() {
        let mut c = Catalog::builtin();
        let before = c.len();
        assert_eq!(c.merge_litellm(SAMPLE), Ok(5));
        // 5 loaded, of which gpt-4o-mini replaces the built-in row.
        assert_eq!(c.len(), before + 4);
        for skipped in [
            "sample_spec",
            "text-embedding-3-small",
            "1024-x-1024/50-steps/bedrock/amazon.nova-canvas-v1:0",
            "twelvelabs.pegasus-1-2-v1:0",
            "fireworks-ai-default",
        ] {
            assert!(
                !c.entries.contains_key(skipped),
                "{skipped} should be skipped"
            );
        }
        let p = &c.entries["us.anthropic.claude-sonnet-4-5-20250929-v1:0"];
        assert_eq!(
            *p,
            Price {
                input: 3.3,
                cached_input: Some(0.33),
                cache_write: Some(4.125),
                cache_write_1h: Some(6.6),
                output: 16.5,
                long_context: Some(LongContext {
                    threshold: 200_000,
                    input: 6.6,
                    output: 24.75,
                    cached_input: Some(0.66),
                    cache_write: Some(8.25),
                }),
                context_window: Some(200_000),
                max_output: Some(64_000),
            }
        );
        let g = &c.entries["gemini/gemini-2.5-pro"];
        assert_eq!(
            g.long_context
                .as_ref()
                .map(|lc| (lc.threshold, lc.input, lc.output)),
            Some((200_000, 2.5, 15.0))
        );
        assert_eq!(
            c.entries["deepseek/deepseek-v4-flash"].cache_write,
            Some(0.0)
        );
    }

    #[test]
    fn merge_litellm_entries_win() {
        let mut c = Catalog::builtin();
        let json = br#"{"claude-haiku-4-5": {"mode": "chat", "litellm_provider": "anthropic",
            "input_cost_per_token": 8e-07, "output_cost_per_token": 4e-06, "max_input_tokens": 200000}}"#;
        assert_eq!(c.merge_litellm(json), Ok(1));
        let p = c
            .price("anthropic", "anthropic", "claude-haiku-4-5")
            .unwrap();
        assert_eq!(
            (p.input, p.output, p.cached_input, p.max_output),
            (0.8, 4.0, None, None)
        );
    }

    #[test]
    fn merge_litellm_errors_name_entry_and_field() {
        let mut c = Catalog::builtin();
        let before = c.len();
        let err = c.merge_litellm(MALFORMED).unwrap_err();
        assert!(
            err.contains("acme/broken-chat") && err.contains("input_cost_per_token"),
            "{err}"
        );
        // Nothing loaded, not even the good entry.
        assert_eq!(c.len(), before);
        assert!(c.price("acme", "openai_compatible", "good-chat").is_none());

        let bad: &[(&[u8], &[&str])] = &[
            (b"not json", &["not valid JSON"]),
            (b"[1, 2]", &["JSON object"]),
            (br#"{"m": 3}"#, &["\"m\"", "expected an object"]),
            (br#"{"m": {"mode": 7, "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}"#, &["\"m\"", "mode"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": -1e-6, "output_cost_per_token": 1e-6}}"#, &["\"m\"", "input_cost_per_token"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": [1]}}"#, &["\"m\"", "output_cost_per_token"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "max_input_tokens": 1.5}}"#, &["\"m\"", "max_input_tokens"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "max_output_tokens": "lots"}}"#, &["\"m\"", "max_output_tokens"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "cache_read_input_token_cost": true}}"#, &["\"m\"", "cache_read_input_token_cost"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "input_cost_per_token_above_99999999999999999999k_tokens": 2e-6}}"#, &["\"m\"", "above_99999999999999999999k"]),
            (br#"{"m": {"mode": "chat", "input_cost_per_token": 1e300, "output_cost_per_token": 1e-6}}"#, &["\"m\"", "out of range"]),
            (br#"{"m": {"mode": "chat", "litellm_provider": 1, "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}"#, &["\"m\"", "litellm_provider"]),
        ];
        for (json, needles) in bad {
            let err = c.merge_litellm(json).unwrap_err();
            for n in *needles {
                assert!(
                    err.contains(n),
                    "{:?}: {err} lacks {n}",
                    String::from_utf8_lossy(json)
                );
            }
        }
        assert_eq!(c.len(), before);
        // Several bad entries are all reported (up to 5).
        let many = br#"{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}"#;
        let err = c.merge_litellm(many).unwrap_err();
        assert!(err.contains("(and 2 more)"), "{err}");
        // Skipped / empty inputs are fine.
        assert_eq!(c.merge_litellm(b"{}"), Ok(0));
        assert_eq!(
            c.merge_litellm(br#"{"sample_spec": {"max_input_tokens": "text"}}"#),
            Ok(0)
        );
    }

    #[test]
    fn merge_litellm_picks_lowest_tier_and_defaults_tier_output() {
        let mut c = Catalog::default();
        let json = br#"{"t": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
            "input_cost_per_token_above_256k_tokens": 4e-6, "input_cost_per_token_above_128k_tokens": 3e-6,
            "input_cost_per_token_above_128k_tokens_priority": 9e-6}}"#;
        assert_eq!(c.merge_litellm(json), Ok(1));
        let lc = c.entries["t"].long_context.clone().unwrap();
        assert_eq!((lc.threshold, lc.input, lc.output), (128_000, 3.0, 2.0));
    }

    #[test]
    fn lookup_normalisation() {
        let c = Catalog::builtin();
        let cases = [
            // (provider, kind, model, resolves to built-in row)
            ("openai", "openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("anthropic", "anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("vertex", "anthropic", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
            ("gemini", "gemini", "models/gemini-2.5-flash", "gemini-2.5-flash"),
            ("gemini", "gemini", "gemini-2.5-flash-001", "gemini-2.5-flash"),
            ("bedrock", "bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5"),
            ("bedrock", "bedrock", "anthropic.claude-sonnet-4-6", "anthropic.claude-sonnet-4-6"),
            ("bedrock", "bedrock", "global.anthropic.claude-opus-4-6-v1", "claude-opus-4-6"),
            ("bedrock", "bedrock", "us.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
            (
                "bedrock",
                "bedrock",
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
                "claude-haiku-4-5",
            ),
            ("bedrock", "bedrock", "us.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"),
            ("azure", "azure_openai", "gpt-4o", "gpt-4o"),
        ];
        for (provider, kind, model, want) in cases {
            let got = c.price(provider, kind, model);
            assert_eq!(
                got,
                c.entries.get(want),
                "{provider}/{model} should resolve to {want}"
            );
            assert!(got.is_some(), "{model}");
        }
        // Bedrock's own row wins over the Anthropic one (Sonnet 4.6 max output differs there).
        assert_eq!(
            c.price("bedrock", "bedrock", "us.anthropic.claude-sonnet-4-6")
                .unwrap()
                .max_output,
            Some(64_000)
        );
        assert_eq!(
            c.price("anthropic", "anthropic", "claude-sonnet-4-6")
                .unwrap()
                .max_output,
            Some(128_000)
        );
        // Nothing invented for look-alikes.
        for model in [
            "gpt-4o-mini-x",
            "claude",
            "",
            "models/",
            "us.",
            "-20250929",
            "gpt-4o-mini-2024-07",
            "arn:aws:x",
        ] {
            assert_eq!(c.price("p", "openai", model), None, "{model:?}");
        }
    }

    #[test]
    fn odd_model_ids_do_not_panic() {
        let c = Catalog::builtin();
        for model in [
            "é-2024-07-18",
            "ééééééééééé",
            "éééé-2024-07-1é",
            "a-ü",
            "x@",
            "@x",
            ":",
            "-v",
            "ü.ü",
            "models/ü",
            "arn:/",
            "us.",
            "..",
            "-",
            "@",
            "gpt-4o-mini-ééé",
            "\u{0}",
            "claude-opus-4-8-v9999999999999999999999",
        ] {
            let _ = candidates(model);
            let _ = c.price("p", "bedrock", model);
        }
    }

    #[test]
    fn candidates_order() {
        assert_eq!(
            candidates("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            [
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                "anthropic.claude-sonnet-4-5-20250929-v1",
                "anthropic.claude-sonnet-4-5-20250929",
                "anthropic.claude-sonnet-4-5",
                "claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5-20250929-v1",
                "claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5",
            ]
        );
        assert_eq!(
            candidates("gpt-4o-mini-2024-07-18"),
            ["gpt-4o-mini-2024-07-18", "gpt-4o-mini"]
        );
        assert_eq!(candidates("gpt-5.6"), ["gpt-5.6"]);
        assert_eq!(candidates("claude-opus-4-6"), ["claude-opus-4-6"]);
        assert_eq!(candidates("mistral-large-2512"), ["mistral-large-2512"]);
    }

    #[test]
    fn kind_and_provider_keys() {
        let mut c = Catalog::builtin();
        let json = br#"{"gemini/gemini-9-test": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                        "dashscope/qwen-test": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                        "azure/gpt-test": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}"#;
        assert_eq!(c.merge_litellm(json), Ok(3));
        assert!(c.price("google", "gemini", "gemini-9-test").is_some());
        assert!(c
            .price("google", "gemini", "models/gemini-9-test")
            .is_some());
        assert!(c.price("ali", "qwen", "qwen-test").is_some());
        assert!(c.price("az", "azure_openai", "gpt-test").is_some());
        assert!(c.price("x", "openai", "gemini-9-test").is_none());
        // A provider named after the LiteLLM prefix finds it too.
        assert!(c
            .price("gemini", "openai_compatible", "gemini-9-test")
            .is_some());
    }

    #[test]
    fn override_precedence() {
        let mut c = Catalog::builtin();
        let mut o = BTreeMap::new();
        o.insert("gpt-4o-mini".to_string(), over(Some(0.10), None));
        o.insert("openai-eu/gpt-4o-mini".to_string(), over(Some(0.20), None));
        o.insert(
            "openai/gpt-4o".to_string(),
            PriceOverride {
                context_window: Some(64_000),
                ..PriceOverride::default()
            },
        );
        c.apply_overrides(&o).unwrap();
        let get = |provider: &str, model: &str| c.price(provider, "openai", model).unwrap().clone();
        // provider/model beats model; model beats catalog; both reach dated ids.
        assert_eq!(get("openai-eu", "gpt-4o-mini").input, 0.20);
        assert_eq!(get("openai-eu", "gpt-4o-mini-2024-07-18").input, 0.20);
        assert_eq!(get("openai", "gpt-4o-mini").input, 0.10);
        assert_eq!(get("openai", "gpt-4o-mini-2024-07-18").input, 0.10);
        // Fields not given keep the catalog's value.
        let eu = get("openai-eu", "gpt-4o-mini");
        assert_eq!(
            (eu.output, eu.cached_input, eu.context_window),
            (0.60, Some(0.075), Some(128_000))
        );
        // Window-only override: prices kept, only for that provider.
        let o4 = get("openai", "gpt-4o");
        assert_eq!((o4.input, o4.context_window), (2.50, Some(64_000)));
        assert_eq!(get("azure", "gpt-4o").context_window, Some(128_000));
        // Overriding a price drops the long tier; overriding a window keeps it.
        let mut o = BTreeMap::new();
        o.insert("claude-sonnet-4-5".to_string(), over(Some(2.0), None));
        o.insert(
            "bedrock/anthropic.claude-sonnet-4-5".to_string(),
            PriceOverride {
                context_window: Some(1_000_000),
                ..PriceOverride::default()
            },
        );
        c.apply_overrides(&o).unwrap();
        assert_eq!(
            c.price("anthropic", "anthropic", "claude-sonnet-4-5")
                .unwrap()
                .long_context,
            None
        );
        let b = c
            .price(
                "bedrock",
                "bedrock",
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
            )
            .unwrap();
        assert_eq!(
            (b.context_window, b.long_context.is_some()),
            (Some(1_000_000), true)
        );
    }

    #[test]
    fn override_errors() {
        let mut c = Catalog::builtin();
        let mut o = BTreeMap::new();
        o.insert("my-model".to_string(), over(Some(1.0), None));
        o.insert("vllm/other".to_string(), over(None, Some(1.0)));
        o.insert("gpt-4o".to_string(), over(Some(f64::NAN), None));
        o.insert(
            "gpt-5".to_string(),
            PriceOverride {
                cached_input: Some(-1.0),
                ..PriceOverride::default()
            },
        );
        let err = c.apply_overrides(&o).unwrap_err();
        for needle in [
            "pricing.my-model",
            "`output`",
            "pricing.vllm/other",
            "`input`",
            "pricing.gpt-4o.input",
            "pricing.gpt-5.cached_input",
        ] {
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        // Nothing applied.
        assert_eq!(c.price("openai", "openai", "gpt-4o").unwrap().input, 2.50);
        assert!(c.overrides.is_empty());
    }

    #[test]
    fn builtin_snapshot_sanity() {
        let c = Catalog::builtin();
        assert_eq!(c.len(), BUILTIN.len(), "duplicate built-in ids");
        for (id, p) in &c.entries {
            assert!(
                p.input > 0.0 && p.output > 0.0,
                "{id}: input and output must be > 0"
            );
            assert!(
                p.cached_input.unwrap_or(p.input) <= p.input,
                "{id}: cached_input > input"
            );
            for w in [p.cache_write, p.cache_write_1h].into_iter().flatten() {
                assert!(w >= p.input, "{id}: cache write cheaper than input");
            }
            if let Some(lc) = &p.long_context {
                assert!(
                    lc.input >= p.input && lc.output >= p.output,
                    "{id}: tier cheaper than base"
                );
                assert!(
                    lc.cached_input.unwrap_or(lc.input) <= lc.input,
                    "{id}: tier cached > tier input"
                );
                assert!(
                    p.context_window.is_none_or(|w| w >= lc.threshold),
                    "{id}: tier beyond window"
                );
            }
        }
        // Windows listed in providers.md §13 (context, max output; None = shares the window).
        let s13: &[(&str, u64, Option<u64>)] = &[
            ("gpt-5.5", 1_050_000, Some(128_000)),
            ("gpt-5.4", 1_050_000, Some(128_000)),
            ("gpt-5.5-pro", 1_050_000, Some(128_000)),
            ("gpt-5.6", 922_000, Some(128_000)),
            ("gpt-5.6-terra", 922_000, Some(128_000)),
            ("gpt-5.6-luna", 922_000, Some(128_000)),
            ("gpt-5.4-mini", 272_000, Some(128_000)),
            ("gpt-5", 272_000, Some(128_000)),
            ("gpt-5-mini", 272_000, Some(128_000)),
            ("gpt-4.1", 1_047_576, Some(32_768)),
            ("gpt-4o", 128_000, Some(16_384)),
            ("claude-opus-4-6", 1_000_000, Some(128_000)),
            ("claude-opus-4-7", 1_000_000, Some(128_000)),
            ("claude-opus-4-8", 1_000_000, Some(128_000)),
            ("claude-opus-5", 1_000_000, Some(128_000)),
            ("claude-sonnet-4-6", 1_000_000, Some(128_000)),
            ("claude-sonnet-5", 1_000_000, Some(128_000)),
            ("claude-fable-5", 1_000_000, Some(128_000)),
            ("anthropic.claude-sonnet-4-6", 1_000_000, Some(64_000)),
            ("claude-sonnet-4-5", 200_000, Some(64_000)),
            ("claude-haiku-4-5", 200_000, Some(64_000)),
            ("claude-opus-4-5", 200_000, Some(64_000)),
            ("gemini-3.1-pro-preview", 1_048_576, Some(65_536)),
            ("gemini-3.5-flash", 1_048_576, Some(65_536)),
            ("gemini-3.1-flash-lite", 1_048_576, Some(65_536)),
            ("gemini-2.5-pro", 1_048_576, Some(65_536)),
            ("gemini-2.5-flash", 1_048_576, Some(65_536)),
            ("mistral-large-latest", 262_144, None),
            ("mistral-medium-3.5", 262_144, None),
            ("mistral-small-latest", 262_144, None),
            ("mistral-large-4", 1_048_576, None),
            ("deepseek-v4-pro", 1_000_000, Some(393_216)),
            ("deepseek-v4-flash", 1_000_000, Some(393_216)),
            ("deepseek-flash", 1_000_000, Some(393_216)),
            ("qwen3.8-max", 991_808, Some(131_072)),
            ("qwen3.7-max", 991_808, Some(65_536)),
            ("qwen3.8-flash", 991_808, Some(131_072)),
        ];
        for (id, window, max_output) in s13 {
            let p = c.entries.get(*id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(
                (p.context_window, p.max_output),
                (Some(*window), *max_output),
                "{id}"
            );
        }
        // Every supported provider kind has models.
        for (kind, model) in [
            ("openai", "gpt-5.6"),
            ("anthropic", "claude-opus-4-8"),
            ("gemini", "gemini-3.5-flash"),
            ("mistral", "mistral-large-latest"),
            ("deepseek", "deepseek-v4-pro"),
            ("qwen", "qwen3.8-max"),
            ("bedrock", "anthropic.claude-opus-4-8"),
            ("bedrock", "amazon.nova-pro-v1:0"),
        ] {
            assert!(c.price(kind, kind, model).is_some(), "{kind}/{model}");
        }
    }

    #[test]
    fn warn_unknown_once_is_bounded() {
        let seen = Mutex::new(HashSet::new());
        assert_eq!(
            first_sighting(&seen, 2, "openai", "gpt-x"),
            Sighting::First("openai/gpt-x".into())
        );
        assert_eq!(first_sighting(&seen, 2, "openai", "gpt-x"), Sighting::Again);
        assert!(matches!(
            first_sighting(&seen, 2, "openai", "gpt-y"),
            Sighting::First(_)
        ));
        assert_eq!(first_sighting(&seen, 2, "openai", "gpt-z"), Sighting::Full);
        assert_eq!(first_sighting(&seen, 2, "openai", "gpt-y"), Sighting::Again);
        // Long names are truncated before they are stored.
        let seen = Mutex::new(HashSet::new());
        let long = "m".repeat(10_000);
        match first_sighting(&seen, 2, "p", &long) {
            Sighting::First(key) => assert_eq!(key.chars().count(), UNKNOWN_KEY_CHARS),
            other => panic!("{other:?}"),
        }
        // The public function never panics, logs or not.
        warn_unknown_once("openai", "gpt-x\n\u{1b}[31m");
        warn_unknown_once("openai", "gpt-x\n\u{1b}[31m");
    }
}
