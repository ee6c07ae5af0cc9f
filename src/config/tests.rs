//! End-to-end tests of `parse_str`: parsing, locations, expansion, validation, redaction.

use super::*;

const SECRET: &str = "sk-live-TOPSECRET-42";

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" | "GEMINI_API_KEY" | "ANTHROPIC_API_KEY" => Some(format!("key-{name}")),
        "LLMUX_KEY_SEARCH" | "SECRET" => Some(SECRET.into()),
        "QUOTED" => Some("ab\"cd\\ef-long-secret".into()),
        "N" => Some("4".into()),
        "YES" => Some("true".into()),
        _ => None,
    }
}

fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
    parse_str(yaml, "llmux.yaml", &env)
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    parse(yaml)
        .err()
        .unwrap_or_else(|| panic!("config was accepted:\n{yaml}"))
        .0
}

/// Line, column and message of the only error.
fn one_error(yaml: &str) -> (usize, usize, String) {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    (errs[0].line, errs[0].column, errs[0].message.clone())
}

const PROVIDER: &str =
    "providers:\n  - { name: p, kind: openai, base_url: http://localhost:1, api_key: k }\n";

/// spec.md §3, comments dropped.
const SPEC_EXAMPLE: &str = r#"
server:
  listen: 127.0.0.1:8080
  admin_listen: 127.0.0.1:9090
  max_body_bytes: 20MiB
  shutdown_grace: 30s
  admin_token: ${LLMUX_ADMIN_TOKEN:-}
  api_keys:
    - name: team-search
      key: ${LLMUX_KEY_SEARCH}
      budget: { usd_per_day: 50, usd_per_month: 1000 }
providers:
  - name: openai
    kind: openai
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_API_KEY}
    region: us
    timeouts: { connect: 2s, first_byte: 30s, idle: 30s, total: 600s }
    budget: { usd_per_day: 200, usd_per_month: 4000 }
  - name: gemini-free
    kind: gemini
    base_url: https://generativelanguage.googleapis.com/v1beta
    api_key: ${GEMINI_API_KEY}
    free_tier:
      requests_per_minute: 10
      requests_per_day: 1500
      tokens_per_minute: 250000
      on_exhausted: next_target
  - name: anthropic
    kind: anthropic
    base_url: https://api.anthropic.com
    api_key: ${ANTHROPIC_API_KEY}
models:
  - name: chat
    strategy: fallback
    targets:
      - { provider: openai,    model: gpt-4o-mini }
      - { provider: anthropic, model: claude-haiku-4-5, weight: 1 }
routing:
  max_attempts: 3
  request_timeout: 600s
  retry_budget: 0.2
circuit_breaker:
  failure_threshold: 5
  open_for: 30s
health_checks:
  interval: 15s
price_catalog: prices.json
pricing:
  gpt-4o-mini:
    input: 0.15
    cached_input: 0.075
    cache_write: 0.1875
    output: 0.60
    context_window: 128000
    max_output: 16384
telemetry:
  otlp_endpoint: ${OTEL_EXPORTER_OTLP_ENDPOINT:-}
state:
  backend: memory
  redis_url: ${REDIS_URL:-}
  key_prefix: llmux
  on_unavailable: local
"#;

#[test]
fn spec_example_parses() {
    let c = parse(SPEC_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.max_body_bytes.0, 20 << 20);
    assert!(c.server.admin_token.is_none() && c.state.redis_url.is_none());
    assert_eq!(c.telemetry.otlp_endpoint, None);
    assert_eq!(c.server.api_keys[0].key.expose(), SECRET);
    let key = c.providers[0].api_key.as_ref().map(Secret::expose);
    assert_eq!((c.providers.len(), key), (3, Some("key-OPENAI_API_KEY")));
    let free = c.providers[1]
        .free_tier
        .as_ref()
        .and_then(|f| f.tokens_per_minute);
    assert_eq!(free, Some(250_000));
    assert_eq!(c.models[0].targets[1].weight, Some(1));
    assert_eq!(c.pricing["gpt-4o-mini"].max_output, Some(16384));
    assert_eq!(c.providers[0].timeouts.total.0.as_secs(), 600);
    let empty = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty.server.listen, "127.0.0.1:8080");
}

#[test]
fn typo_key_is_located_at_the_key() {
    let (line, col, msg) =
        one_error("server:\n  listen: 127.0.0.1:1\n  admin_lisen: 127.0.0.1:2\n");
    assert_eq!((line, col), (3, 3));
    let want = "server.admin_lisen: unknown field `admin_lisen`, expected one of `listen`";
    assert!(msg.starts_with(want), "{msg}");
}

#[test]
fn wrong_enum_variant_names_the_choices() {
    let (line, col, msg) = one_error(&format!("{PROVIDER}  - name: q\n    kind: opneai\n"));
    assert_eq!((line, col), (4, 11));
    let want = "providers[1].kind: unknown variant `opneai`, expected one of `openai`";
    assert!(msg.starts_with(want), "{msg}");
}

#[test]
fn bad_duration_is_located_in_a_flow_mapping() {
    let yaml = format!(
        "{PROVIDER}  - name: q\n    kind: mock\n    timeouts: {{ connect: 2s, idle: 10x }}\n"
    );
    let (line, col, msg) = one_error(&yaml);
    assert_eq!((line, col), (5, 36));
    let want =
        "invalid duration \"10x\": expected a number with a unit ms|s|m|h, like 250ms or 10s";
    assert_eq!(msg, format!("providers[1].timeouts.idle: {want}"));
}

#[test]
fn syntax_errors_are_located() {
    let errs = errors("server:\n  listen: [1, 2\nproviders: []\n");
    assert_eq!(
        (errs.len(), errs[0].line, errs[0].path.as_str()),
        (1, 3, "")
    );
    assert!(
        !errs[0].message.contains(" at line 3 column"),
        "{}",
        errs[0].message
    );
    let tab = errors("server:\n\tlisten: x\n");
    assert_eq!((tab[0].line, tab[0].column), (2, 1));
    assert!(tab[0]
        .message
        .ends_with("(a tab: YAML indents with spaces only)"));
}

#[test]
fn missing_variables_are_all_named_and_located() {
    let yaml = "state:\n  key_prefix: ${NOPE_1}\n  redis_url: x${NOPE_2}\n";
    let errs = errors(yaml);
    let got: Vec<_> = errs
        .iter()
        .map(|e| (e.line, e.column, e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [(2, 15, "state.key_prefix"), (3, 14, "state.redis_url")]
    );
    let want = "state.key_prefix: environment variable `NOPE_1` is not set";
    assert!(errs[0].message.starts_with(want), "{}", errs[0].message);
    assert_eq!(
        errs[0].to_string(),
        format!("llmux.yaml:2:15: {}", errs[0].message)
    );
}

#[test]
fn defaults_apply_and_empty_secrets_become_none() {
    let url = "'${NOPE:-http://h:8/v1}'";
    let yaml = format!(
        "providers: [ {{ name: q, kind: mistral, base_url: {url}, api_key: '${{NOPE:-}}' }} ]"
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].message,
        "providers[0].api_key: required for kind `mistral`"
    );
    let c = parse(&yaml.replace("mistral", "openai_compatible")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.providers[0].base_url.as_deref(), Some("http://h:8/v1"));
    assert!(c.providers[0].api_key.is_none());
}

#[test]
fn env_values_fill_number_and_boolean_fields() {
    let provider = "{ name: '${N}', kind: mock, drop_unsupported_params: '${YES}' }";
    let yaml = format!("routing: {{ max_attempts: '${{N}}' }}\nproviders: [ {provider} ]");
    let c = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.routing.max_attempts, c.providers[0].name.as_str()),
        (4, "4")
    );
    assert!(c.providers[0].drop_unsupported_params);
    let (_, _, msg) = one_error("routing: { max_attempts: '${YES}' }");
    assert_eq!(
        msg,
        "routing.max_attempts: invalid type: boolean `${YES}`, expected u32"
    );
}

#[test]
fn unknown_target_provider_is_reported_at_the_target() {
    let targets = "      - { provider: p, model: a }\n      - { provider: opnai, model: b }\n";
    let yaml = format!("{PROVIDER}models:\n  - name: chat\n    targets:\n{targets}");
    let (line, col, msg) = one_error(&yaml);
    assert_eq!((line, col), (7, 21));
    let want = "models[0].targets[1].provider: unknown provider `opnai`; configured providers: p";
    assert_eq!(msg, want);
}

#[test]
fn every_semantic_error_is_reported_in_line_order() {
    let yaml = "\
server:
  listen: localhost
  admin_listen: 0.0.0.0:9090
  max_body_bytes: 0
  api_keys: [ { name: a, key: k1 }, { name: a, key: k1 } ]
providers:
  - { name: p, kind: azure_openai, base_url: 'https://user:pw@x.example' }
  - { name: p, kind: mock, mock: { fail_rate: 2 }, timeouts: { idle: 0s } }
  - { name: '', kind: openai_compatible, base_url: 'ftp://x' }
models:
  - { name: m, targets: [] }
  - { name: m, targets: [ { provider: p, model: x, weight: 0 } ] }
routing: { max_attempts: 0, retry_budget: 1.5 }
circuit_breaker: { failure_threshold: 0 }
state: { backend: redis, redis_url: 'http://r' }
";
    let errs = errors(yaml);
    let got: Vec<String> = errs
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
        .collect();
    let want = [
        "2:3 server.admin_token",
        "2:11 server.listen",
        "4:19 server.max_body_bytes",
        "5:45 server.api_keys[1].name",
        "5:53 server.api_keys[1].key",
        "7:5 providers[0].api_key",
        "7:5 providers[0].api_version",
        "7:46 providers[0].base_url",
        "8:13 providers[1].name",
        "8:47 providers[1].mock.fail_rate",
        "8:70 providers[1].timeouts.idle",
        "9:13 providers[2].name",
        "9:52 providers[2].base_url",
        "11:25 models[0].targets",
        "12:13 models[1].name",
        "12:60 models[1].targets[0].weight",
        "13:26 routing.max_attempts",
        "13:43 routing.retry_budget",
        "14:39 circuit_breaker.failure_threshold",
        "15:37 state.redis_url",
    ];
    assert_eq!(got, want);
    let text = ConfigErrors(errs).to_string();
    assert!(text.contains("llmux.yaml:5:53: server.api_keys[1].key: duplicate; must be unique"));
    assert!(text.contains("llmux.yaml:8:13: providers[1].name: duplicate `p`; must be unique"));
    assert!(!text.contains("pw@") && !text.contains("k1"), "{text}");
}

#[test]
fn secrets_never_appear_in_messages() {
    let cases = [
        "routing: { max_attempts: '${SECRET}' }",
        "providers: [ { name: q, kind: '${SECRET}' } ]",
        "health_checks: { interval: 'x${SECRET}y' }",
        "health_checks: { interval: '${QUOTED}' }",
        "providers: [ { name: q, kind: qwen, base_url: 'http://${SECRET}@h' } ]",
        "providers: [ { name: q, kind: qwen, api_key: 1234567 } ]",
        "server: { admin_token: TOPSECRETLITERAL, listen: TOPSECRETLITERAL }",
    ];
    let leaks = [SECRET, "ab\"cd", "ab\\\"cd", "1234567", "TOPSECRETLITERAL"];
    for yaml in cases {
        let text = ConfigErrors(errors(yaml)).to_string();
        for leak in leaks {
            assert!(!text.contains(leak), "{leak} leaked from\n{yaml}\n→ {text}");
        }
    }
    let (_, _, msg) = one_error(cases[0]);
    assert_eq!(
        msg,
        "routing.max_attempts: invalid type: string \"${SECRET}\", expected u32"
    );
}

#[test]
fn short_hidden_values_do_not_mangle_words() {
    let env = |n: &str| (n == "R").then(|| "us".to_string());
    let yaml = "providers: [ { name: us, kind: openai, region: '${R}' } ]\n";
    let errs = parse_str(yaml, "f", &env).err().map(|e| e.to_string());
    let want = "f:1:14: providers[0].api_key: required for kind `openai`";
    assert!(errs.is_some_and(|e| e.contains(want)));
}

#[test]
fn admin_token_guards_a_public_admin_listener() {
    assert!(parse("server: { admin_listen: 0.0.0.0:9090, admin_token: '${SECRET}' }").is_ok());
    let (_, _, msg) = one_error("server: { admin_listen: '[::]:9090', admin_token: '${NOPE:-}' }");
    assert!(msg.starts_with("server.admin_token: required"), "{msg}");
}

#[test]
fn base_url_shapes() {
    for ok in [
        "https://api.openai.com/v1/",
        "http://127.0.0.1:8080",
        "http://[::1]:9/x",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    for bad in "api.openai.com https:// https://h/x?y=1 https://h#f https://u:p@h http://h:99999"
        .split(' ')
    {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let path = std::env::temp_dir().join(format!("llmux-config-{}.yaml", std::process::id()));
    assert!(std::fs::write(&path, "routing: { max_attempts: 2 }\n").is_ok());
    let loaded = load_with_env(&path, &env);
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.map(|c| c.routing.max_attempts), Ok(2));
    let missing = load(Path::new("/nonexistent/llmux.yaml"))
        .err()
        .map(|e| e.to_string());
    let want = "/nonexistent/llmux.yaml: cannot read config file";
    assert!(missing.is_some_and(|m| m.starts_with(want)));
}

#[test]
fn json_schema_describes_the_file() {
    let schema = json_schema();
    assert!(schema["properties"]["providers"].is_object(), "{schema}");
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    assert!(schema["definitions"]["Duration"]["pattern"].is_string());
}

#[test]
fn garbage_input_only_gives_errors() {
    let deep_flow = "[".repeat(5000);
    let deep_block: String = (0..300).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    let mut laughs = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
    for (name, prev) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e")] {
        laughs += &format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        );
    }
    let inputs = [
        "\tserver:\n\t\tlisten: x\n",
        "\u{0}\u{1}\u{7f}\u{fffd}\u{feff}",
        "server: *nope\n",
        "a: &x [*x]\n",
        "server: &s { listen: 1 }\nrouting: *s\n",
        "{",
        "- - - -",
        "--- 1\n--- 2\n",
        "42",
        "!!binary AAAA",
        "server: !!map { <<: { listen: x } }\n",
        "? [a, b]\n: c\n",
        "providers: [ { name: \"\\ud800\" } ]",
        "server:\n  listen: ${",
        "models: [ { name: [ { } ] } ]",
        "pricing: { 1: { input: x } }",
        &deep_flow,
        &deep_block,
        &laughs,
    ];
    for input in inputs {
        let errs = parse(input)
            .err()
            .unwrap_or_else(|| panic!("accepted: {input:?}"));
        let sane = |e: &ConfigError| e.line >= 1 && e.column >= 1 && !e.message.is_empty();
        assert!(errs.0.iter().all(sane), "{errs}");
    }
}

#[test]
fn shared_state_and_server_runtime_settings() {
    let c = parse(
        "server: { threads: 1, work_stealing: false }\nstate: { backend: redis, redis_url: 'rediss://:pw@r:6380', timeout: 50ms, sync_interval: 1s, lease_fraction: 0.01 }\n",
    )
    .unwrap();
    assert_eq!(
        (c.server.threads, c.server.work_stealing),
        (Some(1), Some(false))
    );
    assert_eq!(c.state.timeout.0, std::time::Duration::from_millis(50));
    assert_eq!(c.state.lease_fraction, 0.01);
    let (_, _, msg) = one_error("state: { lease_fraction: 1.5 }");
    assert!(msg.starts_with("state.lease_fraction:"), "{msg}");
    let (_, _, msg) = one_error("state: { sync_interval: 0ms }");
    assert!(msg.starts_with("state.sync_interval:"), "{msg}");
    let (_, _, msg) = one_error("server: { threads: 0 }");
    assert!(msg.starts_with("server.threads:"), "{msg}");
}
