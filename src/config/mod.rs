//! Configuration: YAML → validated [`Config`], with `${VAR}` expansion, errors located by
//! file:line:column, and the JSON Schema behind `llmux schema`.
//!
//! Pipeline: YAML syntax → `serde_yaml::Value` → env expansion → typed [`Config`] through
//! `serde_path_to_error` (a type error has a path, which `locate` turns into line:column) →
//! semantic validation reporting every problem at once. No message carries a secret.

mod expand;
mod locate;
mod model;
#[cfg(test)]
mod tests;
pub mod units;

pub use model::*;

use locate::{Locator, PathDisplay, Seg};
use serde_path_to_error::Segment;
use serde_yaml::Value;
use std::collections::HashSet;
use std::{cmp::Reverse, fmt, net::SocketAddr, path::Path};

/// One problem in a config file, located so `llmux check` can print `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file's label (its path for [`load`]).
    pub file: String,
    /// 1-based; 0 (with `column` 0) when the file could not be read at all.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the config, like `providers[1].kind`; empty for syntax and I/O errors.
    pub path: String,
    /// Human text, starting with the path when there is one; never contains a secret.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            _ => write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config file, sorted by position, so a user fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and validates the config file at `path`, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// Like [`load`] with an explicit environment (tests, or a reload with a captured env).
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, &file, env),
        Err(e) => {
            let message = format!("cannot read config file: {e}");
            Err(ConfigErrors(vec![error(
                &file,
                (0, 0),
                String::new(),
                message,
            )]))
        }
    }
}

/// Parses and validates config `text`; `file_label` names it in errors.
pub fn parse_str(
    text: &str,
    file_label: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut value: Value =
        serde_yaml::from_str(text).map_err(|e| syntax_error(text, file_label, &e))?;
    if value.is_null() {
        value = Value::Mapping(Default::default()); // an empty file: all defaults
    }
    let mut expansion = expand::Expansion::default();
    expand::expand(&mut value, env, &mut Vec::new(), &mut expansion);
    let report = Reporter::new(text, file_label, expansion.used, &value);
    if !expansion.errors.is_empty() {
        return Err(report.errors(expansion.errors, false));
    }
    let mut config: Config = loop {
        let e = match serde_path_to_error::deserialize(&value) {
            Ok(config) => break config,
            Err(e) => e,
        };
        let path: Vec<Seg> = e
            .path()
            .iter()
            .map_while(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        if expansion.expanded.contains(&path) && retype(&mut value, &path) {
            continue;
        }
        let message = e.inner().to_string();
        let at_key = message.starts_with("unknown field");
        return Err(report.errors(vec![(path, message)], at_key));
    };
    normalize(&mut config);
    let problems = validate(&config);
    match problems.is_empty() {
        true => Ok(config),
        false => Err(report.errors(problems, false)),
    }
}

/// An env value filling a number or boolean field is a string in the tree: give the scalar at
/// `path` its YAML type (`"4"` → 4). Returns whether it changed (each scalar changes once).
fn retype(value: &mut Value, path: &[Seg]) -> bool {
    let slot = path.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    });
    let Some(slot) = slot else { return false };
    let typed = match slot {
        Value::String(s) => serde_yaml::from_str(s).ok(),
        _ => None,
    };
    match typed {
        Some(t @ (Value::Number(_) | Value::Bool(_))) => {
            *slot = t;
            true
        }
        _ => false,
    }
}

/// The JSON Schema of the config file, for `llmux schema` and editor completion.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

/// A YAML syntax error at serde_yaml's position, with a hint for the classic tab mistake.
fn syntax_error(text: &str, file: &str, e: &serde_yaml::Error) -> ConfigErrors {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    let mut message = e
        .to_string()
        .replacen(&format!(" at line {line} column {column}"), "", 1);
    let at = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.chars().nth(column.saturating_sub(1)));
    if at == Some('\t') {
        message.push_str(" (a tab: YAML indents with spaces only)");
    }
    ConfigErrors(vec![error(file, (line, column), String::new(), message)])
}

/// A [`ConfigError`] (the one constructor, to keep call sites short).
fn error(file: &str, (line, column): (usize, usize), path: String, message: String) -> ConfigError {
    let file = file.to_string();
    ConfigError {
        file,
        line,
        column,
        path,
        message,
    }
}

/// Where `Secret` values live in the file (`*`: any key or index).
const SECRET_PATHS: [&[&str]; 5] = [
    &["server", "admin_token"],
    &["server", "api_keys", "*", "key"],
    &["providers", "*", "api_key"],
    &["providers", "*", "aws", "*"],
    &["state", "redis_url"],
];

/// Turns `(path, message)` pairs into located [`ConfigError`]s with every secret hidden.
struct Reporter<'a> {
    file: &'a str,
    text: &'a str,
    /// `(text to hide, replacement)`, longest first: env values → `${VAR}`, literals → `***`.
    hide: Vec<(String, String)>,
}

impl<'a> Reporter<'a> {
    fn new(text: &'a str, file: &'a str, env_used: Vec<(String, String)>, value: &Value) -> Self {
        let mut hide: Vec<(String, String)> = env_used
            .into_iter()
            .map(|(k, v)| (v, format!("${{{k}}}")))
            .collect();
        SECRET_PATHS
            .iter()
            .for_each(|p| secret_literals(value, p, &mut hide));
        // serde quotes values with `{:?}`, which escapes `"` and `\`: hide that form too.
        let escape = |v: &str| {
            format!("{v:?}")
                .get(1..)?
                .strip_suffix('"')
                .map(String::from)
        };
        let escaped: Vec<_> = hide
            .iter()
            .filter_map(|(v, w)| Some((escape(v)?, w.clone())))
            .collect();
        hide.extend(escaped);
        hide.retain(|(v, _)| !v.is_empty());
        hide.sort_by_key(|(v, _)| Reverse(v.len()));
        Reporter { file, text, hide }
    }

    fn errors(&self, problems: Vec<(Vec<Seg>, String)>, at_key: bool) -> ConfigErrors {
        let locator = Locator::new(self.text); // only now: a valid config never needs it
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|(path, msg)| {
                let at = match at_key {
                    true => locator.key_pos(&path),
                    false => locator.value_pos(&path),
                };
                let msg = self.hide.iter().fold(msg, |m, (v, w)| replace(&m, v, w));
                let path = PathDisplay(&path).to_string();
                let message = match path.is_empty() {
                    true => msg,
                    false => format!("{path}: {msg}"),
                };
                error(self.file, at, path, message)
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    }
}

/// Collects the scalars at `pattern` under `v` as `(value, "***")`.
fn secret_literals(v: &Value, pattern: &[&str], out: &mut Vec<(String, String)>) {
    let Some((first, rest)) = pattern.split_first() else {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        return out.push((text, "***".into()));
    };
    let recurse = |c| secret_literals(c, rest, out);
    match (*first, v) {
        ("*", Value::Sequence(items)) => items.iter().for_each(recurse),
        ("*", Value::Mapping(m)) => m.values().for_each(recurse),
        (key, Value::Mapping(m)) => m.get(key).into_iter().for_each(recurse),
        _ => {}
    }
}

/// Replaces `needle` in `s`. A needle of 1-3 characters (a value like `us` or `1`, not a real
/// secret) is replaced only where it touches no letter or digit, so `must` stays readable.
fn replace(s: &str, needle: &str, with: &str) -> String {
    let word = |c: Option<char>| needle.len() < 4 && c.is_some_and(char::is_alphanumeric);
    let (mut out, mut last) = (String::with_capacity(s.len()), 0);
    for (i, _) in s.match_indices(needle) {
        let end = i + needle.len();
        if !word(s[..i].chars().next_back()) && !word(s[end..].chars().next()) {
            out.push_str(&s[last..i]);
            out.push_str(with);
            last = end;
        }
    }
    out + &s[last..]
}

/// `${VAR:-}` expanding to nothing means "not configured": make such optional values `None`.
fn normalize(c: &mut Config) {
    fn drop_empty<T>(o: &mut Option<T>, empty: fn(&T) -> bool) {
        if o.as_ref().is_some_and(empty) {
            *o = None;
        }
    }
    drop_empty(&mut c.server.admin_token, Secret::is_empty);
    drop_empty(&mut c.state.redis_url, Secret::is_empty);
    drop_empty(&mut c.telemetry.otlp_endpoint, String::is_empty);
    for p in &mut c.providers {
        drop_empty(&mut p.api_key, Secret::is_empty);
        drop_empty(&mut p.base_url, String::is_empty);
        if let Some(aws) = &mut p.aws {
            drop_empty(&mut aws.session_token, Secret::is_empty);
        }
    }
}

/// Builds a path from keys and indices: `path!["providers", i, "kind"]`.
macro_rules! path {
    ($($seg:expr),*) => { vec![$(Seg::from($seg)),*] };
}

/// Semantic problems, each at a path under the current prefix `at`.
#[derive(Default)]
struct Problems {
    at: Vec<Seg>,
    found: Vec<(Vec<Seg>, String)>,
}

const EMPTY: &str = "must not be empty";
const POSITIVE: &str = "must be greater than 0";
const FRACTION: &str = "must be between 0 and 1";

impl Problems {
    /// Records `msg` at `at` + `field` (dotted, like `timeouts.idle`) unless `ok`.
    fn check(&mut self, ok: bool, field: &str, msg: impl Into<String>) {
        if !ok {
            let path = self
                .at
                .iter()
                .cloned()
                .chain(field.split('.').map(Seg::from));
            self.found.push((path.collect(), msg.into()));
        }
    }

    /// `value` must be non-empty and not in `seen`; a secret is not shown in the message.
    fn unique<'a>(
        &mut self,
        seen: &mut HashSet<&'a str>,
        value: &'a str,
        field: &str,
        secret: bool,
    ) {
        self.check(!value.is_empty(), field, EMPTY);
        let shown = if secret {
            String::new()
        } else {
            format!(" `{value}`")
        };
        let fresh = value.is_empty() || seen.insert(value);
        self.check(fresh, field, format!("duplicate{shown}; must be unique"));
    }
}

/// The checks serde cannot express. Returns every problem, not just the first.
fn validate(c: &Config) -> Vec<(Vec<Seg>, String)> {
    use ProviderKind::*;
    let mut v = Problems::default();
    let (s, addr) = (&c.server, |a: &str| a.parse::<SocketAddr>().ok());
    v.at = path!["server"];
    v.check(
        addr(&s.listen).is_some(),
        "listen",
        "must be ip:port, like 127.0.0.1:8080",
    );
    let admin = addr(&s.admin_listen);
    v.check(
        admin.is_some(),
        "admin_listen",
        "must be ip:port, like 127.0.0.1:9090",
    );
    let public = admin.is_some_and(|a| !a.ip().is_loopback());
    let why = "required because server.admin_listen is not a loopback address";
    v.check(!public || s.admin_token.is_some(), "admin_token", why);
    v.check(s.max_body_bytes.0 > 0, "max_body_bytes", POSITIVE);
    let (mut names, mut keys) = (HashSet::new(), HashSet::new());
    for (i, k) in s.api_keys.iter().enumerate() {
        v.at = path!["server", "api_keys", i];
        v.unique(&mut names, &k.name, "name", false);
        v.unique(&mut keys, k.key.expose(), "key", true);
    }

    let mut providers = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        v.at = path!["providers", i];
        v.unique(&mut providers, &p.name, "name", false);
        let required = format!("required for kind `{}`", p.kind.as_str());
        let url_optional = matches!(p.kind, Mock | Bedrock);
        v.check(url_optional || p.base_url.is_some(), "base_url", &required);
        if let Some(Err(why)) = p.base_url.as_deref().map(check_url) {
            v.check(false, "base_url", why);
        }
        let key_optional = matches!(p.kind, OpenaiCompatible | Mock | Bedrock);
        v.check(key_optional || p.api_key.is_some(), "api_key", &required);
        let version = p.api_version.as_deref().is_some_and(|s| !s.is_empty());
        v.check(version || p.kind != AzureOpenai, "api_version", required);
        let t = &p.timeouts;
        let timeouts = [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
        ];
        for (name, d) in timeouts.into_iter().chain([("total", t.total)]) {
            v.check(
                !d.0.is_zero(),
                &format!("timeouts.{name}"),
                "must be greater than 0s",
            );
        }
        let fail_rate = p.mock.as_ref().map_or(0.0, |m| m.fail_rate);
        v.check((0.0..=1.0).contains(&fail_rate), "mock.fail_rate", FRACTION);
    }

    let known: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    let mut models = HashSet::new();
    for (i, m) in c.models.iter().enumerate() {
        v.at = path!["models", i];
        v.unique(&mut models, &m.name, "name", false);
        v.check(
            !m.targets.is_empty(),
            "targets",
            "needs at least one target",
        );
        for (j, t) in m.targets.iter().enumerate() {
            v.at = path!["models", i, "targets", j];
            let (name, list) = (&t.provider, known.join(", "));
            let unknown = format!("unknown provider `{name}`; configured providers: {list}");
            v.check(providers.contains(name.as_str()), "provider", unknown);
            v.check(t.weight != Some(0), "weight", POSITIVE);
        }
    }

    let (r, b) = (&c.routing, &c.circuit_breaker);
    v.at = Vec::new();
    v.check(
        r.max_attempts >= 1,
        "routing.max_attempts",
        "must be at least 1",
    );
    v.check(
        (0.0..=1.0).contains(&r.retry_budget),
        "routing.retry_budget",
        FRACTION,
    );
    v.check(
        !r.request_timeout.0.is_zero(),
        "routing.request_timeout",
        POSITIVE,
    );
    v.check(
        !c.health_checks.interval.0.is_zero(),
        "health_checks.interval",
        POSITIVE,
    );
    v.check(
        b.failure_threshold >= 1,
        "circuit_breaker.failure_threshold",
        "must be at least 1",
    );
    let redis = c.state.redis_url.as_ref().map_or("", Secret::expose);
    let redis_ok = redis.starts_with("redis://") || redis.starts_with("rediss://");
    let why = "state.backend redis needs a redis_url starting with redis:// or rediss://";
    v.check(
        c.state.backend != StateBackend::Redis || redis_ok,
        "state.redis_url",
        why,
    );
    v.check(
        c.state.lease_fraction > 0.0 && c.state.lease_fraction <= 1.0,
        "state.lease_fraction",
        "must be more than 0 and at most 1",
    );
    v.check(!c.state.timeout.0.is_zero(), "state.timeout", POSITIVE);
    v.check(
        c.server.threads.is_none_or(|t| (1..=256).contains(&t)),
        "server.threads",
        "must be between 1 and 256",
    );
    v.check(
        !c.state.sync_interval.0.is_zero(),
        "state.sync_interval",
        POSITIVE,
    );
    v.found
}

/// Checks an upstream base URL without echoing it (it might carry credentials).
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let rest =
        rest.ok_or("must be an absolute http:// or https:// URL, like https://api.openai.com/v1")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    match () {
        _ if authority.contains('@') => {
            Err("must not contain credentials (user:password@); use api_key")
        }
        _ if url.contains(['?', '#']) => Err("must not have a query or fragment"),
        _ if url.contains(char::is_whitespace) => Err("must not contain whitespace"),
        _ if host.is_empty() || host == "[]" => {
            Err("must have a host, like https://api.openai.com/v1")
        }
        _ if port.is_some_and(|p| p.parse::<u16>().is_err()) => Err("has an invalid port"),
        _ => Ok(()),
    }
}
