//! OpenTelemetry export over OTLP/HTTP with protobuf bodies (spec §3 `telemetry.otlp_endpoint`,
//! §7): spans to `{endpoint}/v1/traces`, metrics to `{endpoint}/v1/metrics`.
//!
//! The few OTLP messages llmux sends are written here as prost structs (module [`proto`]) with
//! the field numbers of opentelemetry-proto, because the OpenTelemetry SDK and tonic would cost
//! far more compile time than they save. Spans, two or more per request, skip the structs:
//! [`encode_traces`] writes their protobuf bytes directly (byte-identical to prost, tested),
//! which costs a fifth of building and encoding the structs.
//!
//! The request path only ever calls [`Exporter::submit`] / [`Exporter::submit_all`], which
//! move finished spans into a bounded queue under a short lock and never wait or wake anyone,
//! except once per full batch. A background task ([`Exporter::run`]) takes the queue at least
//! once a second (or when a batch is full), encodes and POSTs with a minimal HTTP/1.1 client,
//! so a slow or dead collector costs dropped spans, never request latency. Waking the exporter
//! per span (a channel receiver) cost a context switch per span: on a sidecar's one core that
//! halved throughput.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Spans waiting for export; past this, new spans are dropped (and counted) instead of queued.
const QUEUE_CAPACITY: usize = 4096;
/// Spans per POST: keeps a body around a few hundred KiB, well under collectors' limits.
const MAX_BATCH: usize = 512;
/// A queued span waits at most this long before it is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One POST (resolve, connect, send, read the status) may take this long.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole flush at shutdown may take this long, so a dead collector cannot hold up exit.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// Export problems are logged at most this often: a down collector must not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// A response head larger than this is not a collector talking.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Response bodies are read (and discarded) up to this size; the connection is closed anyway.
const MAX_RESPONSE_DRAIN: u64 = 1024 * 1024;

/// A span or resource attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// Borrowed for the constant values (`"chat"`, provider kinds), owned for the rest.
    Str(Cow<'static, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// The OTLP span kinds llmux produces: the client request is `Server`, an upstream attempt
/// `Client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
}

/// One finished span, ready for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Some(message) = status ERROR with that message; None = status OK/UNSET.
    pub error: Option<String>,
}

/// A random, non-zero trace id (an all-zero id is invalid in W3C trace context and OTLP).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Parses a W3C `traceparent` header (00-<32 hex>-<16 hex>-<2 hex>) so llmux joins the
/// caller's trace. Follows W3C Trace Context: lowercase hex only, all-zero ids and version
/// `ff` are invalid, and a future version may append `-`-separated fields after the four
/// known ones. Anything invalid is `None` (the caller then starts a new trace).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8])> {
    let b = v.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_bytes::<1>(&b[0..2])?[0];
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = hex_bytes::<16>(&b[3..35])?;
    let span_id = hex_bytes::<8>(&b[36..52])?;
    hex_bytes::<1>(&b[53..55])?; // trace flags: must be hex, value unused
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id))
}

/// Lowercase hex → bytes; `None` unless `s` is exactly `2 * N` lowercase hex digits.
fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A metric point's attributes (label name, value), as in the Prometheus exposition.
pub type Labels = Vec<(&'static str, String)>;

/// A metric for export. Values are cumulative since the exporter started (the Prometheus
/// counters of spec §7 are already kept that way), so OTLP temporality is CUMULATIVE.
#[derive(Debug, Clone)]
pub enum MetricData {
    Sum {
        name: String,
        description: String,
        unit: String,
        monotonic: bool,
        points: Vec<(Labels, f64)>,
    },
    Gauge {
        name: String,
        description: String,
        unit: String,
        points: Vec<(Labels, f64)>,
    },
    Histogram {
        name: String,
        description: String,
        unit: String,
        /// Upper bounds of the buckets, increasing; the last bucket is (last bound, +inf).
        bounds: Vec<f64>,
        /// (attributes, bucket counts (len = bounds + 1, NOT cumulative), sum, count).
        /// A point whose counts do not have `bounds.len() + 1` entries is skipped: collectors
        /// reject it, and it would take the rest of the request down with it.
        points: Vec<(Labels, Vec<u64>, f64, u64)>,
    },
}

/// The OTLP wire messages llmux needs, with the field numbers of opentelemetry-proto
/// (common/v1, resource/v1, trace/v1, metrics/v1 and the collector service requests).
/// Fields llmux never sets are left out: decoders skip unknown fields, and these structs decode
/// what they encode. Public so integration tests can decode what a fake collector receives.
pub mod proto {
    /// `Span.SpanKind`.
    pub const SPAN_KIND_INTERNAL: i32 = 1;
    pub const SPAN_KIND_SERVER: i32 = 2;
    pub const SPAN_KIND_CLIENT: i32 = 3;
    /// `Status.StatusCode`.
    pub const STATUS_CODE_ERROR: i32 = 2;
    /// `AggregationTemporality`.
    pub const AGGREGATION_TEMPORALITY_CUMULATIVE: i32 = 2;

    /// common/v1 `AnyValue` (array, kvlist and bytes values are not used by llmux).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
        }
    }

    /// common/v1 `KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// common/v1 `InstrumentationScope`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    /// resource/v1 `Resource`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    /// collector/trace/v1 `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    /// trace/v1 `ResourceSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    /// trace/v1 `ScopeSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    /// trace/v1 `Span` (no events, links or trace state).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    /// trace/v1 `Status` (field 1 is reserved upstream).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    /// collector/metrics/v1 `ExportMetricsServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    /// metrics/v1 `ResourceMetrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }

    /// metrics/v1 `ScopeMetrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeMetrics {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
    }

    /// metrics/v1 `Metric` (no exponential histogram or summary).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "3")]
        pub unit: String,
        #[prost(oneof = "metric::Data", tags = "5, 7, 9")]
        pub data: Option<metric::Data>,
    }

    pub mod metric {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Data {
            #[prost(message, tag = "5")]
            Gauge(super::Gauge),
            #[prost(message, tag = "7")]
            Sum(super::Sum),
            #[prost(message, tag = "9")]
            Histogram(super::Histogram),
        }
    }

    /// metrics/v1 `Gauge`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }

    /// metrics/v1 `Sum`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sum {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
        #[prost(bool, tag = "3")]
        pub is_monotonic: bool,
    }

    /// metrics/v1 `Histogram` (explicit buckets).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    /// metrics/v1 `NumberDataPoint` (no exemplars or flags).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NumberDataPoint {
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(oneof = "number_data_point::Value", tags = "4, 6")]
        pub value: Option<number_data_point::Value>,
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
    }

    pub mod number_data_point {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(double, tag = "4")]
            AsDouble(f64),
            #[prost(sfixed64, tag = "6")]
            AsInt(i64),
        }
    }

    /// metrics/v1 `HistogramDataPoint` (no exemplars, flags, min or max).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistogramDataPoint {
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(fixed64, repeated, tag = "6")]
        pub bucket_counts: Vec<u64>,
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn key_value(key: &str, value: proto::any_value::Value) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

fn labels_to_proto(labels: &[(&'static str, String)]) -> Vec<proto::KeyValue> {
    labels
        .iter()
        .map(|(k, v)| key_value(k, proto::any_value::Value::StringValue(v.clone())))
        .collect()
}

fn resource(service_name: &str) -> proto::Resource {
    use proto::any_value::Value::StringValue;
    proto::Resource {
        attributes: vec![
            key_value("service.name", StringValue(service_name.to_owned())),
            key_value(
                "service.version",
                StringValue(env!("CARGO_PKG_VERSION").to_owned()),
            ),
            key_value("telemetry.sdk.name", StringValue("llmux".to_owned())),
        ],
    }
}

fn scope() -> proto::InstrumentationScope {
    proto::InstrumentationScope {
        name: "llmux".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Protobuf wire types (encoding spec): varint, 64-bit, length-delimited.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;

/// Appends the key of field `field` (every field llmux writes has a number below 16, so the
/// key is one byte).
fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    debug_assert!(field < 16);
    out.push(field << 3 | wire);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field (bytes, string or an already-encoded message).
fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A proto3 string or bytes field: omitted when empty, as prost and every other encoder do.
fn put_nonempty(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_bytes(out, field, bytes);
    }
}

/// Length of a length-delimited field's key, length prefix and body.
fn len_field(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

/// A common/v1 `KeyValue` as field `field` of the enclosing message.
fn put_attribute(out: &mut Vec<u8>, field: u8, key: &str, value: &AttrValue) {
    // AnyValue is a oneof, so even a zero value is written.
    let any_len = match value {
        AttrValue::Str(s) => len_field(s.len()),
        AttrValue::Bool(_) => 2,
        AttrValue::Int(i) => 1 + varint_len(*i as u64),
        AttrValue::Double(_) => 9,
    };
    let key_len = if key.is_empty() {
        0
    } else {
        len_field(key.len())
    };
    put_key(out, field, WIRE_LEN);
    put_varint(out, (key_len + len_field(any_len)) as u64);
    put_nonempty(out, 1, key.as_bytes());
    put_key(out, 2, WIRE_LEN);
    put_varint(out, any_len as u64);
    match value {
        AttrValue::Str(s) => put_bytes(out, 1, s.as_bytes()),
        AttrValue::Bool(b) => {
            put_key(out, 2, WIRE_VARINT);
            out.push(u8::from(*b));
        }
        AttrValue::Int(i) => {
            put_key(out, 3, WIRE_VARINT);
            put_varint(out, *i as u64);
        }
        AttrValue::Double(d) => {
            put_key(out, 4, WIRE_FIXED64);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// The body of one trace/v1 `Span` (fields as in [`proto::Span`]).
fn put_span_body(out: &mut Vec<u8>, s: &SpanRecord) {
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    if let Some(parent) = &s.parent_span_id {
        put_bytes(out, 4, parent);
    }
    put_nonempty(out, 5, s.name.as_bytes());
    let kind = match s.kind {
        SpanKind::Server => proto::SPAN_KIND_SERVER,
        SpanKind::Client => proto::SPAN_KIND_CLIENT,
        SpanKind::Internal => proto::SPAN_KIND_INTERNAL,
    };
    put_key(out, 6, WIRE_VARINT);
    put_varint(out, kind as u64);
    let start = unix_nanos(s.start);
    // A clock step must not produce a span that ends before it starts.
    let end = unix_nanos(s.end).max(start);
    for (field, t) in [(7, start), (8, end)] {
        if t != 0 {
            put_key(out, field, WIRE_FIXED64);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    for (key, value) in &s.attributes {
        put_attribute(out, 9, key, value);
    }
    if let Some(message) = &s.error {
        let message_len = if message.is_empty() {
            0
        } else {
            len_field(message.len())
        };
        put_key(out, 15, WIRE_LEN);
        put_varint(out, (message_len + 2) as u64);
        put_nonempty(out, 2, message.as_bytes());
        put_key(out, 3, WIRE_VARINT);
        put_varint(out, proto::STATUS_CODE_ERROR as u64);
    }
}

/// Appends `s` as field 2 of a `ScopeSpans` (key, length, `Span` body). `scratch` holds the
/// body while its length is not yet known; callers reuse it.
fn put_scope_span(out: &mut Vec<u8>, scratch: &mut Vec<u8>, s: &SpanRecord) {
    scratch.clear();
    put_span_body(scratch, s);
    put_bytes(out, 2, scratch);
}

/// The protobuf body of `POST /v1/traces`: one resource, one scope, all `spans`. Written
/// directly, without building [`proto`] structs; the bytes are what prost would write.
pub fn encode_traces(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(spans.len() * 320);
    let mut scratch = Vec::with_capacity(512);
    for s in spans {
        put_scope_span(&mut encoded, &mut scratch, s);
    }
    traces_request(service_name, &encoded)
}

/// [`encode_traces`] around spans already written by [`put_scope_span`].
fn traces_request(service_name: &str, encoded_spans: &[u8]) -> Vec<u8> {
    let resource = proto::Resource::encode_to_vec(&resource(service_name));
    let scope = proto::InstrumentationScope::encode_to_vec(&scope());
    // ScopeSpans: 1 scope, 2 spans. ResourceSpans: 1 resource, 2 scope_spans.
    let scope_spans_len = len_field(scope.len()) + encoded_spans.len();
    let resource_spans_len = len_field(resource.len()) + len_field(scope_spans_len);
    let mut out = Vec::with_capacity(len_field(resource_spans_len));
    put_key(&mut out, 1, WIRE_LEN); // ExportTraceServiceRequest 1 resource_spans
    put_varint(&mut out, resource_spans_len as u64);
    put_bytes(&mut out, 1, &resource);
    put_key(&mut out, 2, WIRE_LEN);
    put_varint(&mut out, scope_spans_len as u64);
    put_bytes(&mut out, 1, &scope);
    out.extend_from_slice(encoded_spans);
    out
}

fn metric_to_proto(m: &MetricData, start: u64, now: u64) -> proto::Metric {
    use proto::metric::Data;
    let number_points = |points: &[(Labels, f64)], start: u64| {
        points
            .iter()
            .map(|(labels, v)| proto::NumberDataPoint {
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(proto::number_data_point::Value::AsDouble(*v)),
                attributes: labels_to_proto(labels),
            })
            .collect()
    };
    let (name, description, unit, data) = match m {
        MetricData::Sum {
            name,
            description,
            unit,
            monotonic,
            points,
        } => (
            name,
            description,
            unit,
            Data::Sum(proto::Sum {
                data_points: number_points(points, start),
                aggregation_temporality: proto::AGGREGATION_TEMPORALITY_CUMULATIVE,
                is_monotonic: *monotonic,
            }),
        ),
        MetricData::Gauge {
            name,
            description,
            unit,
            points,
        } => (
            name,
            description,
            unit,
            // A gauge is a sample at `now`; OTLP says its start time is not meaningful.
            Data::Gauge(proto::Gauge {
                data_points: number_points(points, 0),
            }),
        ),
        MetricData::Histogram {
            name,
            description,
            unit,
            bounds,
            points,
        } => (
            name,
            description,
            unit,
            Data::Histogram(proto::Histogram {
                data_points: points
                    .iter()
                    .filter(|(_, counts, _, _)| counts.len() == bounds.len() + 1)
                    .map(|(labels, counts, sum, count)| proto::HistogramDataPoint {
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: *count,
                        sum: Some(*sum),
                        bucket_counts: counts.clone(),
                        explicit_bounds: bounds.clone(),
                        attributes: labels_to_proto(labels),
                    })
                    .collect(),
                aggregation_temporality: proto::AGGREGATION_TEMPORALITY_CUMULATIVE,
            }),
        ),
    };
    proto::Metric {
        name: name.clone(),
        description: description.clone(),
        unit: unit.clone(),
        data: Some(data),
    }
}

/// The protobuf body of `POST /v1/metrics`. `start` is when the cumulative values began
/// counting (process start), `now` the collection time.
pub fn encode_metrics(
    service_name: &str,
    start: SystemTime,
    now: SystemTime,
    metrics: &[MetricData],
) -> Vec<u8> {
    let now = unix_nanos(now);
    let start = unix_nanos(start).min(now);
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(resource(service_name)),
            scope_metrics: vec![proto::ScopeMetrics {
                scope: Some(scope()),
                metrics: metrics
                    .iter()
                    .map(|m| metric_to_proto(m, start, now))
                    .collect(),
            }],
        }],
    }
    .encode_to_vec()
}

/// Where the collector is, parsed once from the configured endpoint.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// For `lookup_host`: a name or an IP literal (IPv6 without brackets).
    host: String,
    port: u16,
    /// `host[:port]` as configured, for the `Host` header and log lines.
    authority: String,
    traces_path: String,
    metrics_path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, String> {
        let e = endpoint.trim();
        let scheme_end = e.find("://").ok_or_else(|| {
            format!("OTLP endpoint `{e}` has no scheme: expected http://host:port")
        })?;
        let scheme = e[..scheme_end].to_ascii_lowercase();
        if scheme == "https" {
            return Err(format!(
                "OTLP endpoint `{e}`: https is not supported yet; point llmux at a collector's \
                 plain http:// OTLP/HTTP port (e.g. a local OpenTelemetry Collector on :4318)"
            ));
        }
        if scheme != "http" {
            return Err(format!(
                "OTLP endpoint `{e}`: unsupported scheme `{scheme}` (expected http://)"
            ));
        }
        let rest = &e[scheme_end + 3..];
        if rest.contains(['?', '#', '@'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "OTLP endpoint `{e}`: expected http://host[:port][/path] without credentials, \
                 query or fragment"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let bad = || format!("OTLP endpoint `{e}`: invalid host or port");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || (!authority.starts_with('[') && host.contains(':')) {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => 80,
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            traces_path: format!("{path}/v1/traces"),
            metrics_path: format!("{path}/v1/metrics"),
        })
    }
}

/// The bounded, asynchronous OTLP exporter: [`Exporter::submit`] on the request path,
/// [`Exporter::run`] on a background task.
pub struct Exporter {
    queue: Mutex<SpanQueue>,
    /// Wakes the export loop when the queue holds a full batch (once per batch, not per span).
    batch_full: Notify,
    /// Set by the first (and only effective) `run`.
    running: AtomicBool,
    target: Target,
    service_name: String,
    /// Start time of the cumulative metrics.
    started: SystemTime,
    dropped: AtomicU64,
    export_failures: AtomicU64,
    post_timeout: Duration,
    shutdown_budget: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.target.authority)
            .field("traces_path", &self.target.traces_path)
            .field("service_name", &self.service_name)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// Spans waiting for the export loop, already encoded (by the request's own thread, while
/// its data is in cache and freed where it was allocated; the export loop only copies bytes).
#[derive(Default)]
struct SpanQueue {
    spans: EncodedSpans,
    /// Set at shutdown: later spans are refused (and counted as dropped).
    closed: bool,
}

/// Spans written by [`put_scope_span`], back to back.
#[derive(Default)]
struct EncodedSpans {
    bytes: Vec<u8>,
    /// Where each span ends in `bytes`.
    ends: Vec<usize>,
}

impl EncodedSpans {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of spans `from..to`.
    fn range(&self, from: usize, to: usize) -> &[u8] {
        let start = from.checked_sub(1).map_or(0, |i| self.ends[i]);
        &self.bytes[start..self.ends[to - 1]]
    }
}

/// Lets one warning through per [`LOG_EVERY`].
#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

impl Exporter {
    /// `endpoint` like `http://127.0.0.1:4318` (a trailing `/` and a path prefix are
    /// tolerated; `/v1/traces` and `/v1/metrics` are appended). `https://` is an error: TLS
    /// is not implemented here, run a local collector instead. Needs no runtime: nothing is
    /// resolved or connected until [`Exporter::run`].
    pub fn new(endpoint: &str, service_name: &str) -> Result<Arc<Exporter>, String> {
        let target = Target::parse(endpoint)?;
        Ok(Arc::new(Exporter {
            queue: Mutex::new(SpanQueue::default()),
            batch_full: Notify::new(),
            running: AtomicBool::new(false),
            target,
            service_name: service_name.to_owned(),
            started: SystemTime::now(),
            dropped: AtomicU64::new(0),
            export_failures: AtomicU64::new(0),
            post_timeout: POST_TIMEOUT,
            shutdown_budget: SHUTDOWN_BUDGET,
        }))
    }

    /// Queues a finished span; never blocks or waits. When the queue (4096 spans) is full,
    /// or the exporter has shut down, the span is dropped and counted.
    pub fn submit(&self, span: SpanRecord) {
        self.submit_all(std::iter::once(span));
    }

    /// Queues the spans of one request under one short lock, as [`Exporter::submit`] does
    /// each. Wakes the export loop only when this fills a batch.
    pub fn submit_all(&self, spans: impl IntoIterator<Item = SpanRecord>) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<(EncodedSpans, Vec<u8>)> = Default::default();
        }
        SCRATCH.with_borrow_mut(|(encoded, scratch)| {
            encoded.bytes.clear();
            encoded.ends.clear();
            for span in spans {
                put_scope_span(&mut encoded.bytes, scratch, &span);
                encoded.ends.push(encoded.bytes.len());
            }
            self.enqueue(encoded);
        });
    }

    /// Queues encoded spans under one short lock.
    fn enqueue(&self, encoded: &EncodedSpans) {
        let mut lost = 0;
        let filled_batch = {
            let mut q = self.lock_queue();
            let before = q.spans.len();
            for i in 0..encoded.len() {
                if q.closed || q.spans.len() >= QUEUE_CAPACITY {
                    lost += 1;
                } else {
                    q.spans.bytes.extend_from_slice(encoded.range(i, i + 1));
                    let end = q.spans.bytes.len();
                    q.spans.ends.push(end);
                }
            }
            before < MAX_BATCH && q.spans.len() >= MAX_BATCH
        };
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        if filled_batch {
            self.batch_full.notify_one();
        }
    }

    /// The queue, even if a thread panicked while holding it (a `Vec` push cannot leave it
    /// inconsistent).
    fn lock_queue(&self) -> MutexGuard<'_, SpanQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything queued so far, leaving an empty queue with room for a batch. `close` also
    /// refuses spans from now on.
    fn take_queued(&self, close: bool) -> EncodedSpans {
        let fresh = if close {
            EncodedSpans::default()
        } else {
            // Allocated before the lock is taken; a batch of spans is ~200 KiB.
            EncodedSpans {
                bytes: Vec::with_capacity(MAX_BATCH * 448),
                ends: Vec::with_capacity(MAX_BATCH),
            }
        };
        let mut q = self.lock_queue();
        q.closed |= close;
        std::mem::replace(&mut q.spans, fresh)
    }

    /// Spans dropped because the queue was full, an export failed, or the exporter had shut
    /// down.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// POSTs (traces or metrics) that failed: connection errors, timeouts, non-2xx answers.
    pub fn export_failures(&self) -> u64 {
        self.export_failures.load(Ordering::Relaxed)
    }

    /// Runs the export loop until `shutdown` resolves: sends queued spans in POSTs of at most
    /// 512, at least once a second; every `metrics_every` (zero disables metrics export) calls
    /// `collect_metrics()` and POSTs the result. On shutdown, sends what is still queued and a
    /// last metrics snapshot, within 5 s in all. Each POST is bounded by a 5 s timeout; a
    /// failed POST drops its spans (counted in [`Exporter::dropped`]). Problems are logged at
    /// most once a minute, never with payloads. Only the first call runs; a second returns
    /// at once.
    pub async fn run<F, M>(
        self: Arc<Self>,
        metrics_every: Duration,
        collect_metrics: M,
        shutdown: F,
    ) where
        F: Future<Output = ()> + Send,
        M: Fn() -> Vec<MetricData> + Send + Sync,
    {
        if self.running.swap(true, Ordering::AcqRel) {
            log::warn!("OTLP exporter: run() called twice; the second call does nothing");
            return;
        }
        tokio::pin!(shutdown);
        let mut log = LogLimiter::default();
        let mut reported_drops = 0u64;
        let mut flush =
            tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let metrics_on = !metrics_every.is_zero();
        // interval() panics on zero; the branch is disabled then anyway.
        let period = if metrics_on {
            metrics_every
        } else {
            Duration::from_secs(3600)
        };
        let mut metrics_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // Ticks before the queue, so a constantly filling queue cannot starve them.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = metrics_tick.tick(), if metrics_on => {
                    self.export_metrics(&collect_metrics, self.post_timeout, &mut log).await;
                }
                _ = flush.tick() => {
                    let queued = self.take_queued(false);
                    self.export_all(&queued, None, &mut log).await;
                    let dropped = self.dropped();
                    if dropped > reported_drops && log.allow() {
                        log::warn!(
                            "OTLP exporter: {dropped} spans dropped so far (queue full or export \
                             failed to {})",
                            self.target.authority
                        );
                        reported_drops = dropped;
                    }
                }
                () = self.batch_full.notified() => {
                    let queued = self.take_queued(false);
                    self.export_all(&queued, None, &mut log).await;
                }
            }
        }

        // Shutdown: refuse new spans (they are counted as dropped), then send what is queued.
        let deadline = Instant::now() + self.shutdown_budget;
        let queued = self.take_queued(true);
        self.export_all(&queued, Some(deadline), &mut log).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if metrics_on && !left.is_zero() {
            self.export_metrics(&collect_metrics, left.min(self.post_timeout), &mut log)
                .await;
        }
    }

    /// Sends `spans` in POSTs of at most [`MAX_BATCH`]. With a `deadline` (shutdown), what
    /// cannot be sent before it is dropped and counted.
    async fn export_all(
        &self,
        spans: &EncodedSpans,
        deadline: Option<Instant>,
        log: &mut LogLimiter,
    ) {
        let mut from = 0;
        while from < spans.len() {
            let to = (from + MAX_BATCH).min(spans.len());
            let timeout = match deadline {
                None => self.post_timeout,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let lost = spans.len() - from;
                        self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                        log::warn!(
                            "OTLP exporter: shutdown flush ran out of time; {lost} spans dropped"
                        );
                        return;
                    }
                    left.min(self.post_timeout)
                }
            };
            self.export_spans(spans.range(from, to), to - from, timeout, log)
                .await;
            from = to;
        }
    }

    /// Sends `n` encoded spans in one POST; on failure they are counted as dropped.
    async fn export_spans(&self, batch: &[u8], n: usize, timeout: Duration, log: &mut LogLimiter) {
        let body = traces_request(&self.service_name, batch);
        let n = n as u64;
        if let Err(e) = self.post(&self.target.traces_path, &body, timeout).await {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.export_failures.fetch_add(1, Ordering::Relaxed);
            if log.allow() {
                log::warn!(
                    "OTLP exporter: sending {n} spans to {}{} failed: {e} ({} spans dropped so \
                     far; further errors are logged at most once a minute)",
                    self.target.authority,
                    self.target.traces_path,
                    self.dropped()
                );
            }
        }
    }

    async fn export_metrics<M>(&self, collect: &M, timeout: Duration, log: &mut LogLimiter)
    where
        M: Fn() -> Vec<MetricData>,
    {
        let metrics = collect();
        if metrics.is_empty() {
            return;
        }
        let body = encode_metrics(
            &self.service_name,
            self.started,
            SystemTime::now(),
            &metrics,
        );
        drop(metrics);
        if let Err(e) = self.post(&self.target.metrics_path, &body, timeout).await {
            self.export_failures.fetch_add(1, Ordering::Relaxed);
            if log.allow() {
                log::warn!(
                    "OTLP exporter: sending metrics to {}{} failed: {e} (further errors are \
                     logged at most once a minute)",
                    self.target.authority,
                    self.target.metrics_path
                );
            }
        }
    }

    async fn post(&self, path: &str, body: &[u8], timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, post(&self.target, path, body)).await {
            Ok(Ok(200..=299)) => Ok(()),
            Ok(Ok(status)) => Err(format!("the collector answered HTTP {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }
}

/// One HTTP/1.1 POST on a fresh connection (`Connection: close`: at about one POST a second
/// a pool buys nothing). Returns the final status code.
async fn post(target: &Target, path: &str, body: &[u8]) -> Result<u16, String> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let mut last_err = None;
    let mut stream = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| match last_err {
        Some(e) => format!("cannot connect to {}: {e}", target.authority),
        None => format!("{} resolved to no address", target.host),
    })?;
    // Head and body go in two writes; without NODELAY, Nagle could hold the body back.
    let _ = stream.set_nodelay(true);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: llmux/{}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.authority,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    stream
        .write_all(body)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    read_response(&mut stream).await
}

/// Reads a response's status (skipping 1xx interim responses) and drains its body, so the
/// server sees an orderly close. The body is never looked at.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<u16, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let code = resp.code.unwrap_or(0);
                    let mut chunked = false;
                    let mut length = None;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = true;
                        } else if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok());
                        }
                    }
                    Some((head_len, code, chunked, length))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(format!("malformed HTTP response: {e}")),
            }
        };
        if let Some((head_len, code, chunked, length)) = parsed {
            buf.drain(..head_len);
            if (100..200).contains(&code) {
                continue; // e.g. 100 Continue: the final response follows
            }
            // With chunked or no length, the body ends at EOF (we asked for Connection: close).
            let remaining = match (code, chunked, length) {
                (204 | 304, _, _) => Some(0),
                (_, false, Some(n)) => Some(n.saturating_sub(buf.len() as u64)),
                _ => None,
            };
            drain(s, remaining, &mut chunk).await;
            return Ok(code);
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err("HTTP response head too large".to_owned());
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            return Err("connection closed before a complete HTTP response".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and discards `remaining` bytes (`None`: until EOF), at most [`MAX_RESPONSE_DRAIN`];
/// errors end the drain quietly because the status is already known.
async fn drain<S: AsyncRead + Unpin>(s: &mut S, remaining: Option<u64>, chunk: &mut [u8]) {
    let mut left = remaining.unwrap_or(u64::MAX).min(MAX_RESPONSE_DRAIN);
    while left > 0 {
        match s.read(chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn span(name: &str, parent: Option<[u8; 8]>) -> SpanRecord {
        SpanRecord {
            trace_id: [0xab; 16],
            span_id: new_span_id(),
            parent_span_id: parent,
            name: name.to_owned(),
            kind: if parent.is_some() {
                SpanKind::Client
            } else {
                SpanKind::Server
            },
            start: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_123),
            end: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_500_000_456),
            attributes: vec![
                ("gen_ai.request.model", AttrValue::Str("gpt-4o-mini".into())),
                ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
                ("llmux.cost_usd", AttrValue::Double(0.25)),
                ("llmux.stream", AttrValue::Bool(true)),
            ],
            error: None,
        }
    }

    fn decode_traces(body: &[u8]) -> proto::ExportTraceServiceRequest {
        proto::ExportTraceServiceRequest::decode(body).expect("valid ExportTraceServiceRequest")
    }

    fn spans_of(req: &proto::ExportTraceServiceRequest) -> Vec<proto::Span> {
        req.resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    /// Hand-computed bytes of a tiny ExportTraceServiceRequest: pins every field number and
    /// wire type llmux relies on against opentelemetry-proto.
    #[test]
    fn span_encoding_matches_hand_computed_bytes() {
        let record = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "s".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_nanos(1),
            end: UNIX_EPOCH + Duration::from_nanos(2),
            attributes: vec![("a", AttrValue::Str("b".into()))],
            error: Some("e".into()),
        };
        let mut span = Vec::new();
        span.extend([0x0a, 16]); // 1 trace_id: bytes
        span.extend([1; 16]);
        span.extend([0x12, 8]); // 2 span_id: bytes
        span.extend([2; 8]);
        span.extend([0x22, 8]); // 4 parent_span_id: bytes
        span.extend([3; 8]);
        span.extend([0x2a, 1, b's']); // 5 name: string
        span.extend([0x30, 3]); // 6 kind: varint, SPAN_KIND_CLIENT = 3
        span.extend([0x39, 1, 0, 0, 0, 0, 0, 0, 0]); // 7 start_time_unix_nano: fixed64
        span.extend([0x41, 2, 0, 0, 0, 0, 0, 0, 0]); // 8 end_time_unix_nano: fixed64
                                                     // 9 attributes: KeyValue{1 key "a", 2 value AnyValue{1 string_value "b"}}
        span.extend([0x4a, 8, 0x0a, 1, b'a', 0x12, 3, 0x0a, 1, b'b']);
        // 15 status: Status{2 message "e", 3 code ERROR = 2}
        span.extend([0x7a, 5, 0x12, 1, b'e', 0x18, 2]);
        assert_eq!(span.len(), 78);
        let mut written = Vec::new();
        put_span_body(&mut written, &record);
        assert_eq!(written, span);

        // The envelope: request 1 resource_spans { 1 resource, 2 scope_spans { 1 scope, 2 span } }.
        let resource = proto::Resource::encode_to_vec(&resource("svc"));
        let scope = proto::InstrumentationScope::encode_to_vec(&scope());
        let mut scope_spans = vec![0x0a, scope.len() as u8];
        scope_spans.extend(&scope);
        scope_spans.extend([0x12, span.len() as u8]);
        scope_spans.extend(&span);
        let mut resource_spans = vec![0x0a, resource.len() as u8];
        resource_spans.extend(&resource);
        resource_spans.extend([0x12, scope_spans.len() as u8]);
        resource_spans.extend(&scope_spans);
        // Over 127 bytes: the length takes a two-byte varint.
        let n = resource_spans.len();
        assert!((128..16_384).contains(&n), "{n}");
        let mut expected = vec![0x0a, (n as u8 & 0x7f) | 0x80, (n >> 7) as u8];
        expected.extend(&resource_spans);
        assert_eq!(encode_traces("svc", &[record]), expected);

        // The other attribute types: bool (2, varint), int (3, varint), double (4, fixed64).
        let kv = |v| {
            let mut out = Vec::new();
            put_attribute(&mut out, 1, "k", &v);
            out[2..].to_vec() // without the enclosing field's key and length
        };
        assert_eq!(kv(AttrValue::Bool(true)), [0x0a, 1, b'k', 0x12, 2, 0x10, 1]);
        assert_eq!(kv(AttrValue::Int(5)), [0x0a, 1, b'k', 0x12, 2, 0x18, 5]);
        let mut d = vec![0x0a, 1, b'k', 0x12, 9, 0x21];
        d.extend(1.5f64.to_le_bytes());
        assert_eq!(kv(AttrValue::Double(1.5)), d);
    }

    /// The reference the direct encoder is held to: prost encoding the [`proto`] structs.
    fn span_to_proto(s: &SpanRecord) -> proto::Span {
        let start = unix_nanos(s.start);
        proto::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                SpanKind::Server => proto::SPAN_KIND_SERVER,
                SpanKind::Client => proto::SPAN_KIND_CLIENT,
                SpanKind::Internal => proto::SPAN_KIND_INTERNAL,
            },
            start_time_unix_nano: start,
            end_time_unix_nano: unix_nanos(s.end).max(start),
            attributes: s.attributes.iter().map(attr_to_proto).collect(),
            status: s.error.as_ref().map(|message| proto::Status {
                message: message.clone(),
                code: proto::STATUS_CODE_ERROR,
            }),
            flags: 0,
        }
    }

    fn attr_to_proto((key, value): &(&'static str, AttrValue)) -> proto::KeyValue {
        use proto::any_value::Value;
        let v = match value {
            AttrValue::Str(s) => Value::StringValue(s.to_string()),
            AttrValue::Int(i) => Value::IntValue(*i),
            AttrValue::Double(d) => Value::DoubleValue(*d),
            AttrValue::Bool(b) => Value::BoolValue(*b),
        };
        key_value(key, v)
    }

    fn prost_encode_traces(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
        proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(resource(service_name)),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(scope()),
                    spans: spans.iter().map(span_to_proto).collect(),
                }],
            }],
        }
        .encode_to_vec()
    }

    /// Every shape a span can take is written byte for byte as prost writes it: zero and
    /// empty values (omitted in proto3, kept in the AnyValue oneof), negative and large
    /// varints, lengths that need two-byte prefixes, times before the epoch.
    #[test]
    fn direct_span_encoding_equals_prost() {
        let mut spans = Vec::new();
        for (i, kind) in [SpanKind::Server, SpanKind::Client, SpanKind::Internal]
            .into_iter()
            .enumerate()
        {
            let mut s = span(&"n".repeat(i * 70), (i != 0).then_some([9; 8]));
            s.kind = kind;
            s.attributes.extend([
                ("", AttrValue::Str(Cow::Borrowed(""))),
                ("neg", AttrValue::Int(-1)),
                ("big", AttrValue::Int(i64::MAX)),
                ("zero", AttrValue::Int(0)),
                ("off", AttrValue::Bool(false)),
                ("nil", AttrValue::Double(0.0)),
                ("long", AttrValue::Str("x".repeat(200 * i).into())),
            ]);
            s.error = match i {
                0 => None,
                1 => Some(String::new()),
                _ => Some("e".repeat(300)),
            };
            spans.push(s);
        }
        let mut odd = span("", None);
        odd.start = UNIX_EPOCH - Duration::from_secs(5);
        odd.end = UNIX_EPOCH;
        odd.attributes.clear();
        spans.push(odd);
        for n in 0..=spans.len() {
            assert_eq!(
                encode_traces("svc", &spans[..n]),
                prost_encode_traces("svc", &spans[..n]),
                "{n} spans"
            );
        }
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(out.len(), prost::encoding::encoded_len_varint(v), "{v}");
        }
    }

    #[test]
    fn metric_encoding_matches_hand_computed_bytes() {
        let m = MetricData::Sum {
            name: "n".into(),
            description: String::new(),
            unit: String::new(),
            monotonic: true,
            points: vec![(vec![], 2.0)],
        };
        let mut point = vec![0x11]; // NumberDataPoint 2 start_time_unix_nano: fixed64
        point.extend(5u64.to_le_bytes());
        point.push(0x19); // 3 time_unix_nano: fixed64
        point.extend(9u64.to_le_bytes());
        point.push(0x21); // 4 as_double
        point.extend(2.0f64.to_le_bytes());
        let mut sum = vec![0x0a, point.len() as u8]; // Sum 1 data_points
        sum.extend(&point);
        sum.extend([0x10, 2, 0x18, 1]); // 2 temporality CUMULATIVE, 3 is_monotonic
        let mut expected = vec![0x0a, 1, b'n', 0x3a, sum.len() as u8]; // Metric 1 name, 7 sum
        expected.extend(&sum);
        assert_eq!(metric_to_proto(&m, 5, 9).encode_to_vec(), expected);

        let h = MetricData::Histogram {
            name: "h".into(),
            description: String::new(),
            unit: String::new(),
            bounds: vec![1.0],
            points: vec![(vec![("k", "v".into())], vec![3, 4], 6.5, 7)],
        };
        let mut p = vec![0x11];
        p.extend(5u64.to_le_bytes());
        p.push(0x19);
        p.extend(9u64.to_le_bytes());
        p.push(0x21); // 4 count: fixed64
        p.extend(7u64.to_le_bytes());
        p.push(0x29); // 5 sum: double
        p.extend(6.5f64.to_le_bytes());
        p.extend([0x32, 16]); // 6 bucket_counts: packed fixed64
        p.extend(3u64.to_le_bytes());
        p.extend(4u64.to_le_bytes());
        p.extend([0x3a, 8]); // 7 explicit_bounds: packed double
        p.extend(1.0f64.to_le_bytes());
        p.extend([0x4a, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']); // 9 attributes
        let mut hist = vec![0x0a, p.len() as u8]; // Histogram 1 data_points
        hist.extend(&p);
        hist.extend([0x10, 2]); // 2 temporality CUMULATIVE
        let mut expected = vec![0x0a, 1, b'h', 0x4a, hist.len() as u8]; // Metric 9 histogram
        expected.extend(&hist);
        assert_eq!(metric_to_proto(&h, 5, 9).encode_to_vec(), expected);
    }

    #[test]
    fn span_tree_round_trips() {
        let root = span("chat gpt-4o-mini", None);
        let mut attempt = span("chat gpt-4o-mini attempt", Some(root.span_id));
        attempt.error = Some("upstream 503".into());
        let body = encode_traces("llmux-test", &[root.clone(), attempt.clone()]);
        let req = decode_traces(&body);
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().expect("resource");
        let attr = |k: &str| {
            res.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        use proto::any_value::Value;
        assert_eq!(
            attr("service.name"),
            Some(Value::StringValue("llmux-test".into()))
        );
        assert_eq!(
            attr("service.version"),
            Some(Value::StringValue(env!("CARGO_PKG_VERSION").into()))
        );
        assert_eq!(
            attr("telemetry.sdk.name"),
            Some(Value::StringValue("llmux".into()))
        );
        assert_eq!(
            rs.scope_spans[0].scope.as_ref().map(|s| s.name.as_str()),
            Some("llmux")
        );
        let spans = spans_of(&req);
        assert_eq!(spans.len(), 2);
        let (r, a) = (&spans[0], &spans[1]);
        assert_eq!(r.trace_id, root.trace_id);
        assert_eq!(r.span_id, root.span_id);
        assert!(r.parent_span_id.is_empty());
        assert_eq!(r.kind, proto::SPAN_KIND_SERVER);
        assert_eq!(r.status, None);
        assert_eq!(r.start_time_unix_nano, 1_700_000_000_000_000_123);
        assert_eq!(r.end_time_unix_nano, 1_700_000_000_500_000_456);
        assert_eq!(r.attributes.len(), 4);
        assert_eq!(r.attributes[1].key, "gen_ai.usage.input_tokens");
        assert_eq!(
            r.attributes[1].value.clone().and_then(|v| v.value),
            Some(Value::IntValue(12))
        );
        assert_eq!(a.trace_id, root.trace_id);
        assert_eq!(a.parent_span_id, root.span_id);
        assert_eq!(a.kind, proto::SPAN_KIND_CLIENT);
        assert_eq!(
            a.status,
            Some(proto::Status {
                message: "upstream 503".into(),
                code: proto::STATUS_CODE_ERROR
            })
        );
    }

    #[test]
    fn odd_times_do_not_panic_or_go_backwards() {
        let mut s = span("x", None);
        s.start = UNIX_EPOCH + Duration::from_secs(10);
        s.end = UNIX_EPOCH + Duration::from_secs(5);
        let decoded =
            |s: &SpanRecord| spans_of(&decode_traces(&encode_traces("x", std::slice::from_ref(s))));
        let p = &decoded(&s)[0];
        assert_eq!(p.end_time_unix_nano, p.start_time_unix_nano);
        s.start = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(decoded(&s)[0].start_time_unix_nano, 0);
    }

    #[test]
    fn metrics_round_trip_and_skip_bad_histogram_points() {
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let now = UNIX_EPOCH + Duration::from_secs(160);
        let metrics = vec![
            MetricData::Sum {
                name: "llmux_requests_total".into(),
                description: "Client requests.".into(),
                unit: "1".into(),
                monotonic: true,
                points: vec![(
                    vec![("model", "m".into()), ("outcome", "success".into())],
                    3.0,
                )],
            },
            MetricData::Gauge {
                name: "llmux_circuit_state".into(),
                description: String::new(),
                unit: String::new(),
                points: vec![(vec![("provider", "p".into())], 2.0)],
            },
            MetricData::Histogram {
                name: "llmux_request_duration_seconds".into(),
                description: String::new(),
                unit: "s".into(),
                bounds: vec![0.1, 1.0],
                points: vec![
                    (vec![("provider", "p".into())], vec![1, 2, 0], 1.3, 3),
                    (vec![("provider", "bad".into())], vec![1, 2], 1.3, 3),
                ],
            },
        ];
        let body = encode_metrics("svc", start, now, &metrics);
        let req = proto::ExportMetricsServiceRequest::decode(body.as_slice()).expect("decodes");
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(ms.len(), 3);
        use proto::metric::Data;
        match &ms[0].data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.aggregation_temporality,
                    proto::AGGREGATION_TEMPORALITY_CUMULATIVE
                );
                assert_eq!(s.data_points[0].start_time_unix_nano, 100_000_000_000);
                assert_eq!(s.data_points[0].time_unix_nano, 160_000_000_000);
                assert_eq!(
                    s.data_points[0].value,
                    Some(proto::number_data_point::Value::AsDouble(3.0))
                );
                assert_eq!(s.data_points[0].attributes.len(), 2);
            }
            other => panic!("expected a sum, got {other:?}"),
        }
        assert!(matches!(&ms[1].data, Some(Data::Gauge(g)) if g.data_points.len() == 1));
        match &ms[2].data {
            Some(Data::Histogram(h)) => {
                assert_eq!(h.data_points.len(), 1, "the malformed point is skipped");
                let p = &h.data_points[0];
                assert_eq!(p.bucket_counts, vec![1, 2, 0]);
                assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
                assert_eq!((p.count, p.sum), (3, Some(1.3)));
            }
            other => panic!("expected a histogram, got {other:?}"),
        }
    }

    #[test]
    fn traceparent_parsing() {
        let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
        let sid = "00f067aa0ba902b7";
        let ok = parse_traceparent(&format!("00-{tid}-{sid}-01")).expect("valid");
        assert_eq!(ok.0[0], 0x4b);
        assert_eq!(ok.0[15], 0x36);
        assert_eq!(ok.1, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(parse_traceparent(&format!(" 00-{tid}-{sid}-00\t")).is_some());
        // A future version may carry more fields.
        assert!(parse_traceparent(&format!("01-{tid}-{sid}-01-extra")).is_some());
        assert!(parse_traceparent(&format!("01-{tid}-{sid}-01")).is_some());
        for bad in [
            String::new(),
            "garbage".to_owned(),
            format!("00-{tid}-{sid}-01-extra"), // version 00 has exactly four fields
            format!("01-{tid}-{sid}-01x"),
            format!("ff-{tid}-{sid}-01"),
            format!("00-{}-{sid}-01", tid.to_uppercase()),
            format!("00-{tid}-{}-01", sid.to_uppercase()),
            format!("00-{}-{sid}-01", "0".repeat(32)),
            format!("00-{tid}-{}-01", "0".repeat(16)),
            format!("00-{tid}-{sid}-0g"),
            format!("0x-{tid}-{sid}-01"),
            format!("00_{tid}_{sid}_01"),
            format!("00-{tid}-{sid}"),
            format!("00-{}é-{sid}-01", &tid[..31]),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad:?}");
        }
        // Arbitrary input never panics (multi-byte characters included).
        let alphabet: Vec<char> = "0123456789abcdefABX-é ".chars().collect();
        for _ in 0..20_000 {
            let len = fastrand::usize(50..60);
            let s: String = (0..len)
                .map(|_| alphabet[fastrand::usize(..alphabet.len())])
                .collect();
            let _ = parse_traceparent(&s);
        }
    }

    #[test]
    fn ids_are_random_and_non_zero() {
        assert_ne!(new_trace_id(), [0; 16]);
        assert_ne!(new_span_id(), [0; 8]);
        assert_ne!(new_trace_id(), new_trace_id());
        assert_ne!(new_span_id(), new_span_id());
    }

    #[test]
    fn endpoint_parsing() {
        let t = Target::parse("http://127.0.0.1:4318/").expect("ok");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 4318));
        assert_eq!(t.authority, "127.0.0.1:4318");
        assert_eq!(t.traces_path, "/v1/traces");
        assert_eq!(t.metrics_path, "/v1/metrics");
        let t = Target::parse(" HTTP://collector/otlp/ ").expect("ok");
        assert_eq!((t.host.as_str(), t.port), ("collector", 80));
        assert_eq!(t.traces_path, "/otlp/v1/traces");
        let t = Target::parse("http://[::1]:4318").expect("ok");
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 4318, "[::1]:4318")
        );
        let e = Target::parse("https://collector:4318").expect_err("https");
        assert!(e.contains("https is not supported yet"), "{e}");
        for bad in [
            "",
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://:4318",
            "http://host:port",
            "http://host:0",
            "http://host:99999",
            "http://user:pw@host:4318",
            "http://host:4318/?x=1",
            "http://ho st:4318",
            "http://::1:4318",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    async fn status_of(raw: &[u8]) -> Result<u16, String> {
        let mut r = raw;
        read_response(&mut r).await
    }

    #[tokio::test]
    async fn response_reading() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
            Ok(200)
        );
        assert_eq!(status_of(b"HTTP/1.0 204 No Content\r\n\r\n").await, Ok(204));
        assert_eq!(
            status_of(
                b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            .await,
            Ok(400)
        );
        assert_eq!(
            status_of(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n\r\n").await,
            Ok(202)
        );
        assert!(status_of(b"").await.is_err());
        assert!(status_of(b"HTTP/1.1 200 OK\r\ncontent-le").await.is_err());
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
        // Random bytes never panic.
        for _ in 0..2000 {
            let len = fastrand::usize(..200);
            let mut raw: Vec<u8> = b"HTTP/1.1 ".to_vec();
            raw.extend((0..len).map(|_| fastrand::u8(..)));
            let _ = status_of(&raw).await;
        }
    }

    struct Received {
        path: String,
        content_type: String,
        body: Vec<u8>,
    }

    type Store = Arc<Mutex<Vec<Received>>>;

    /// A fake collector on 127.0.0.1:0 that records each POST, then answers `status`
    /// (or, with `hang`, never answers).
    async fn collector(status: u16, hang: bool) -> (String, Store) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store: Store = Arc::default();
        let s = store.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let store = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16384];
                    let (head_len, path, content_type, len) = loop {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        let mut h = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut h);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let header = |name: &str| {
                                req.headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case(name))
                                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                                    .unwrap_or_default()
                            };
                            let len: usize = header("content-length").parse().expect("length");
                            assert_eq!(req.method, Some("POST"));
                            break (
                                n,
                                req.path.unwrap_or("").to_owned(),
                                header("content-type"),
                                len,
                            );
                        }
                    };
                    while buf.len() < head_len + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    store.lock().expect("store").push(Received {
                        path,
                        content_type,
                        body: buf[head_len..].to_vec(),
                    });
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}/"), store)
    }

    fn traces(store: &Store) -> Vec<Vec<proto::Span>> {
        store
            .lock()
            .expect("store")
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .map(|r| {
                assert_eq!(r.content_type, "application/x-protobuf");
                spans_of(&decode_traces(&r.body))
            })
            .collect()
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    type Stop = tokio::sync::oneshot::Sender<()>;

    fn start(
        exp: &Arc<Exporter>,
        metrics_every: Duration,
        collect: impl Fn() -> Vec<MetricData> + Send + Sync + 'static,
    ) -> (Stop, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(exp.clone().run(metrics_every, collect, async move {
            let _ = rx.await;
        }));
        (tx, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_arrive_batched_within_a_second() {
        let (url, store) = collector(200, false).await;
        let exp = Exporter::new(&url, "svc").expect("exporter");
        let (stop, task) = start(&exp, Duration::ZERO, Vec::new);
        let t0 = Instant::now();
        let root = span("root", None);
        exp.submit(root.clone());
        exp.submit(span("child 1", Some(root.span_id)));
        exp.submit(span("child 2", Some(root.span_id)));
        wait_until("the batch", || !traces(&store).is_empty()).await;
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t0.elapsed()
        );
        let posts = traces(&store);
        assert_eq!(posts.len(), 1, "three spans, one POST");
        assert_eq!(posts[0].len(), 3);
        assert_eq!(posts[0][1].parent_span_id, root.span_id);
        let _ = stop.send(());
        task.await.expect("run");
        assert_eq!(exp.dropped(), 0);
        assert_eq!(exp.export_failures(), 0);
        // After shutdown, spans are refused and counted.
        exp.submit(span("late", None));
        assert_eq!(exp.dropped(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_drops_and_counts_then_drains_in_batches() {
        let (url, store) = collector(200, false).await;
        let exp = Exporter::new(&url, "svc").expect("exporter");
        let one = span("s", None);
        let t0 = Instant::now();
        for _ in 0..5000 {
            exp.submit(one.clone());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "submit must not block"
        );
        assert_eq!(exp.dropped(), (5000 - QUEUE_CAPACITY) as u64);
        let (stop, task) = start(&exp, Duration::ZERO, Vec::new);
        wait_until("all queued spans", || {
            traces(&store).iter().map(Vec::len).sum::<usize>() == QUEUE_CAPACITY
        })
        .await;
        let posts = traces(&store);
        assert!(posts.iter().all(|p| p.len() <= MAX_BATCH));
        assert_eq!(posts.len(), QUEUE_CAPACITY / MAX_BATCH);
        let _ = stop.send(());
        task.await.expect("run");
        assert_eq!(exp.dropped(), (5000 - QUEUE_CAPACITY) as u64);
        // A second run() returns at once.
        exp.clone()
            .run(Duration::ZERO, Vec::new, std::future::pending())
            .await;
    }

    fn sample_metrics(n: f64) -> Vec<MetricData> {
        vec![
            MetricData::Sum {
                name: "llmux_requests_total".into(),
                description: "Client requests.".into(),
                unit: "1".into(),
                monotonic: true,
                points: vec![(vec![("model", "m".into())], n)],
            },
            MetricData::Histogram {
                name: "llmux_overhead_seconds".into(),
                description: String::new(),
                unit: "s".into(),
                bounds: vec![0.001, 0.01],
                points: vec![(vec![], vec![1, 0, 0], 0.0005, 1)],
            },
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_are_posted_periodically_and_shutdown_flushes() {
        let (url, store) = collector(200, false).await;
        let exp = Exporter::new(&url, "svc").expect("exporter");
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let (stop, task) = start(&exp, Duration::from_millis(100), move || {
            sample_metrics(c.fetch_add(1, Ordering::Relaxed) as f64 + 1.0)
        });
        let metrics_posts = |store: &Store| {
            store
                .lock()
                .expect("store")
                .iter()
                .filter(|r| r.path == "/v1/metrics")
                .map(|r| {
                    assert_eq!(r.content_type, "application/x-protobuf");
                    proto::ExportMetricsServiceRequest::decode(r.body.as_slice()).expect("decodes")
                })
                .collect::<Vec<_>>()
        };
        wait_until("two metrics POSTs", || metrics_posts(&store).len() >= 2).await;
        let posts = metrics_posts(&store);
        let ms = &posts[1].resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(ms[0].name, "llmux_requests_total");
        match &ms[0].data {
            Some(proto::metric::Data::Sum(s)) => assert_eq!(
                s.data_points[0].value,
                Some(proto::number_data_point::Value::AsDouble(2.0))
            ),
            other => panic!("expected a sum, got {other:?}"),
        }
        // Spans submitted just before shutdown still go out, with a last metrics snapshot.
        for i in 0..5 {
            exp.submit(span(&format!("late {i}"), None));
        }
        let before = metrics_posts(&store).len();
        let _ = stop.send(());
        task.await.expect("run");
        assert_eq!(traces(&store).iter().map(Vec::len).sum::<usize>(), 5);
        assert!(metrics_posts(&store).len() > before);
        assert_eq!(exp.dropped(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_exports_are_counted() {
        // Non-2xx answer.
        let (url, store) = collector(500, false).await;
        let exp = Exporter::new(&url, "svc").expect("exporter");
        let (stop, task) = start(&exp, Duration::ZERO, Vec::new);
        exp.submit(span("a", None));
        exp.submit(span("b", None));
        wait_until("the failed POST", || exp.export_failures() == 1).await;
        assert_eq!(exp.dropped(), 2);
        assert_eq!(traces(&store).len(), 1);
        let _ = stop.send(());
        task.await.expect("run");

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let exp = Exporter::new(&format!("http://127.0.0.1:{port}"), "svc").expect("exporter");
        let (stop, task) = start(&exp, Duration::from_millis(50), || sample_metrics(1.0));
        exp.submit(span("a", None));
        let _ = stop.send(());
        let t0 = Instant::now();
        task.await.expect("run");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(exp.dropped(), 1);
        assert!(exp.export_failures() >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_collector_is_bounded_by_timeouts() {
        let (url, store) = collector(200, true).await;
        let mut exp = Exporter::new(&url, "svc").expect("exporter");
        {
            let e = Arc::get_mut(&mut exp).expect("sole owner");
            e.post_timeout = Duration::from_millis(200);
            e.shutdown_budget = Duration::from_millis(300);
        }
        let (stop, task) = start(&exp, Duration::ZERO, Vec::new);
        for _ in 0..(3 * MAX_BATCH) {
            exp.submit(span("s", None));
        }
        wait_until("the first POST", || !traces(&store).is_empty()).await;
        let _ = stop.send(());
        let t0 = Instant::now();
        task.await.expect("run");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(
            exp.dropped(),
            3 * MAX_BATCH as u64,
            "every span was lost, and counted"
        );
    }
}
