//! Micro-benchmarks of llmux's per-request hot paths (no network).
//!
//! `cargo bench --bench hot_paths` (about 2 minutes; `-- <filter>` runs a subset, e.g.
//! `cargo bench --bench hot_paths -- translate_request`).
//!
//! Groups:
//! * `parse_request`: client body → `ChatRequest` (short prompt, 100 KB prompt), and the
//!   same parse with plain `serde_json` for reference (`parse_request` tracks the JSON path
//!   only when a body fails, so the two should now match).
//! * `translate_request`: `Adapter::chat_request` for OpenAI (pass-through re-serialise),
//!   Anthropic and Gemini, short and 100 KB prompts.
//! * `translate_response`: `Adapter::chat_response` on a recorded mock answer (~0.5 KB).
//! * `stream_translate`: a fresh `StreamTranslator` fed a recorded mock stream one event per
//!   chunk, as the proxy reads it; throughput is in chunks, so time/chunk = 1 / thrpt.
//! * `sse_framer`: `SseFramer` splitting the same streams (events cut across two reads).
//! * `plan`: `RoutingTable::plan` for one request (an alias with two targets, and a
//!   `provider/model` direct address).
//!
//! The recorded bodies in `benches/data/` are what `llmux mock` answers to the load
//! benchmark's request (`benches/load/`), so these numbers explain the load numbers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llmux::providers::sse::SseFramer;
use llmux::providers::{build_adapter, Adapter, BaseUrl};
use llmux::types::ChatRequest;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The providers the benchmark translates to. `base_url`s are never contacted.
const CONFIG: &str = r#"
server:
  listen: 127.0.0.1:8080
providers:
  - { name: oai, kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-bench }
  - { name: ant, kind: anthropic, base_url: "http://127.0.0.1:9", api_key: sk-ant-bench }
  - { name: gem, kind: gemini, base_url: "http://127.0.0.1:9/v1beta", api_key: gm-bench }
models:
  - name: chat
    strategy: fallback
    targets:
      - { provider: oai, model: gpt-4o-mini }
      - { provider: ant, model: claude-haiku-4-5 }
  - name: chat-weighted
    strategy: weighted
    targets:
      - { provider: oai, model: gpt-4o-mini, weight: 3 }
      - { provider: gem, model: gemini-2.5-flash, weight: 1 }
"#;

/// (provider name in CONFIG, upstream model, recorded non-stream answer, recorded stream).
const PROVIDERS: [(&str, &str, &[u8], &[u8]); 3] = [
    (
        "oai",
        "gpt-4o-mini",
        include_bytes!("data/openai.json"),
        include_bytes!("data/openai.sse"),
    ),
    (
        "ant",
        "claude-haiku-4-5",
        include_bytes!("data/anthropic.json"),
        include_bytes!("data/anthropic.sse"),
    ),
    (
        "gem",
        "gemini-2.5-flash",
        include_bytes!("data/gemini.json"),
        include_bytes!("data/gemini.sse"),
    ),
];

fn config() -> llmux::config::Config {
    llmux::config::parse_str(CONFIG, "bench.yaml", &|_| None).expect("bench config is valid")
}

fn adapters() -> Vec<(&'static str, Arc<dyn Adapter>)> {
    let cfg = config();
    PROVIDERS
        .iter()
        .map(|(name, ..)| {
            let p = cfg
                .providers
                .iter()
                .find(|p| p.name == *name)
                .expect("provider in CONFIG");
            let base = BaseUrl::parse(p.base_url.as_deref().expect("base_url")).expect("url");
            (*name, build_adapter(p, &base).expect("adapter builds"))
        })
        .collect()
}

/// The load benchmark's request body, with a prompt of `prompt_bytes` (short: its own text).
fn body(prompt_bytes: Option<usize>, stream: bool) -> Vec<u8> {
    let prompt = match prompt_bytes {
        None => "Say hello in one short sentence.".to_owned(),
        Some(n) => {
            let line = "The quick brown fox jumps over the lazy dog; \"quoted\" text\tand a tab. ";
            line.repeat(n / line.len() + 1)[..n].to_owned()
        }
    };
    let mut v = serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    serde_json::to_vec(&v).expect("serialises")
}

fn request(prompt_bytes: Option<usize>, stream: bool) -> ChatRequest {
    llmux::proxy::parse_request(&body(prompt_bytes, stream)).expect("valid request")
}

const SIZES: [(&str, Option<usize>); 2] = [("short", None), ("100KB", Some(100 * 1024))];

fn parse_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    for (label, size) in SIZES {
        let bytes = body(size, false);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(label, |b| {
            b.iter(|| llmux::proxy::parse_request(black_box(&bytes)).unwrap())
        });
        // Reference: the same typed parse without serde_path_to_error's path tracking
        // (what a parse that only tracks the path after a failure would cost).
        g.bench_function(format!("{label}/plain_serde_json"), |b| {
            b.iter(|| serde_json::from_slice::<ChatRequest>(black_box(&bytes)).unwrap())
        });
    }
    g.finish();
}

fn translate_request(c: &mut Criterion) {
    let adapters = adapters();
    let mut g = c.benchmark_group("translate_request");
    for (label, size) in SIZES {
        let req = request(size, false);
        for ((name, adapter), (_, model, ..)) in adapters.iter().zip(PROVIDERS) {
            g.bench_with_input(BenchmarkId::new(*name, label), &req, |b, req| {
                b.iter(|| adapter.chat_request(black_box(req), model).unwrap())
            });
        }
    }
    g.finish();
}

fn translate_response(c: &mut Criterion) {
    let adapters = adapters();
    let req = request(None, false);
    let mut g = c.benchmark_group("translate_response");
    for ((name, adapter), (_, model, answer, _)) in adapters.iter().zip(PROVIDERS) {
        g.throughput(Throughput::Bytes(answer.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| {
                adapter
                    .chat_response(&req, model, black_box(answer))
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// Splits a recorded stream into its events (separator included), one chunk each.
fn events(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut f = SseFramer::default();
    f.push(stream);
    let mut out = Vec::new();
    while let Some(e) = f.next_event() {
        out.push(e.to_vec());
    }
    assert!(f.take_rest().is_none(), "recorded stream ends on an event");
    out
}

fn stream_translate(c: &mut Criterion) {
    let adapters = adapters();
    let req = request(None, true);
    let mut g = c.benchmark_group("stream_translate");
    for ((name, adapter), (_, model, _, stream)) in adapters.iter().zip(PROVIDERS) {
        let chunks = events(stream);
        g.throughput(Throughput::Elements(chunks.len() as u64));
        g.bench_function(*name, |b| {
            let mut out = bytes::BytesMut::with_capacity(8192);
            b.iter(|| {
                let mut t = adapter.stream_translator(&req, model);
                for chunk in &chunks {
                    t.feed(black_box(chunk), &mut out).unwrap();
                    // The proxy hands each chunk's output to Pingora right away.
                    black_box(out.split());
                }
                t.finish(&mut out).unwrap();
                black_box(out.split());
                t.usage()
            })
        });
    }
    g.finish();
}

fn sse_framer(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_framer");
    for (name, _, _, stream) in PROVIDERS {
        let chunks = events(stream);
        // Each event arrives cut in two reads, the worst case the framer handles.
        let halves: Vec<&[u8]> = chunks
            .iter()
            .flat_map(|e| {
                let (a, b) = e.split_at(e.len() / 2);
                [a, b]
            })
            .collect();
        g.throughput(Throughput::Elements(chunks.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut f = SseFramer::default();
                let mut n = 0;
                for half in &halves {
                    f.push(black_box(half));
                    while let Some(e) = f.next_event() {
                        n += e.len();
                    }
                }
                n
            })
        });
    }
    g.finish();
}

fn plan(c: &mut Criterion) {
    let cfg = config();
    let table = llmux::server::build_table(&cfg, None, Path::new(".")).expect("table builds");
    let mut g = c.benchmark_group("plan");
    for model in ["chat", "chat-weighted", "ant/claude-haiku-4-5"] {
        g.bench_function(model, |b| {
            b.iter(|| table.plan(black_box(model), None, 20, 64).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = parse_request, translate_request, translate_response, stream_translate, sse_framer, plan
}
criterion_main!(benches);
