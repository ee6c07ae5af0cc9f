"""A fake OTLP/HTTP collector for the end-to-end suite.

Runs a ThreadingHTTPServer on 127.0.0.1:<free port>, accepts protobuf POSTs at /v1/traces and
/v1/metrics, and decodes them with the official ``opentelemetry-proto`` package, so the suite
checks llmux's hand-written encoder against the reference schema rather than against itself.

    rx = OtlpReceiver().start()
    ... run llmux with telemetry.otlp_endpoint = rx.url ...
    spans = rx.wait_for_spans(lambda s: len(s) >= 2)
    rx.stop()

Export is asynchronous (llmux sends spans at least once a second), hence the wait_for_* helpers.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}
_TEMPORALITY = {0: "UNSPECIFIED", 1: "DELTA", 2: "CUMULATIVE"}


def any_value(v: Any) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _span_dict(span: Any, resource: dict[str, Any], scope: str) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "kind": _KINDS.get(span.kind, str(span.kind)),
        "attributes": attributes(span.attributes),
        "status": {
            "code": _STATUS.get(span.status.code, str(span.status.code)),
            "message": span.status.message,
        },
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "resource": resource,
        "scope": scope,
    }


def _metric_points(metric: Any) -> list[dict[str, Any]]:
    which = metric.WhichOneof("data")
    out: list[dict[str, Any]] = []
    if which in ("sum", "gauge"):
        data = getattr(metric, which)
        for p in data.data_points:
            point = {
                "type": which,
                "attributes": attributes(p.attributes),
                "value": getattr(p, p.WhichOneof("value")) if p.WhichOneof("value") else None,
                "start_time_unix_nano": p.start_time_unix_nano,
                "time_unix_nano": p.time_unix_nano,
            }
            if which == "sum":
                point["monotonic"] = data.is_monotonic
                point["temporality"] = _TEMPORALITY.get(data.aggregation_temporality)
            out.append(point)
    elif which == "histogram":
        data = metric.histogram
        for p in data.data_points:
            out.append(
                {
                    "type": "histogram",
                    "attributes": attributes(p.attributes),
                    "bucket_counts": list(p.bucket_counts),
                    "explicit_bounds": list(p.explicit_bounds),
                    "sum": p.sum if p.HasField("sum") else None,
                    "count": p.count,
                    "temporality": _TEMPORALITY.get(data.aggregation_temporality),
                    "start_time_unix_nano": p.start_time_unix_nano,
                    "time_unix_nano": p.time_unix_nano,
                }
            )
    elif which is not None:
        out.append({"type": which})
    return out


class OtlpReceiver:
    """A fake OTLP/HTTP collector. ``status`` is the HTTP status it answers (set it to 503 to
    test export failures); ``requests`` records (path, content_type, body length) per POST."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, str, int]] = []
        self.errors: list[str] = []
        self._traces: list[Any] = []  # decoded ExportTraceServiceRequest, in arrival order
        self._metrics: list[Any] = []  # decoded ExportMetricsServiceRequest, in arrival order
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "OtlpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                path = self.path.split("?", 1)[0]
                content_type = self.headers.get("Content-Type") or ""
                reply = b""
                code = receiver.status
                try:
                    if path == "/v1/traces":
                        req = ExportTraceServiceRequest.FromString(body)
                        reply = ExportTraceServiceResponse().SerializeToString()
                        with receiver._lock:
                            receiver._traces.append(req)
                    elif path == "/v1/metrics":
                        req = ExportMetricsServiceRequest.FromString(body)
                        reply = ExportMetricsServiceResponse().SerializeToString()
                        with receiver._lock:
                            receiver._metrics.append(req)
                    else:
                        code = 404
                except Exception as e:  # a decode failure is a test failure: keep it
                    with receiver._lock:
                        receiver.errors.append(f"{path}: {e!r}")
                    code = 400
                with receiver._lock:
                    receiver.requests.append((path, content_type, len(body)))
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The value for `telemetry.otlp_endpoint` (OTEL_EXPORTER_OTLP_ENDPOINT)."""
        return f"http://127.0.0.1:{self.port}"

    # -- decoded data ------------------------------------------------------------------------

    def traces(self) -> list[dict[str, Any]]:
        """Every span received so far, in arrival order, as dicts: name, trace_id, span_id,
        parent_span_id (hex; None for a root), kind ("SERVER", "CLIENT", ...), attributes
        {key: value}, status {"code": "UNSET"|"OK"|"ERROR", "message"}, start/end times,
        resource {key: value} and scope (name)."""
        with self._lock:
            reqs = list(self._traces)
        out = []
        for req in reqs:
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(_span_dict(span, resource, ss.scope.name))
        return out

    def metrics(self, latest: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Metric name → data points. Values are cumulative and re-sent on every export, so by
        default each name maps to the points of the most recent export that carried it;
        ``latest=False`` concatenates the points of every export in arrival order.

        A point is {"type": "sum"|"gauge", "attributes", "value", ...} or
        {"type": "histogram", "attributes", "bucket_counts", "explicit_bounds", "sum",
        "count", ...}."""
        with self._lock:
            reqs = list(self._metrics)
        out: dict[str, list[dict[str, Any]]] = {}
        for req in reqs:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        points = _metric_points(metric)
                        if latest:
                            out[metric.name] = points
                        else:
                            out.setdefault(metric.name, []).extend(points)
        return out

    def metric_resources(self) -> list[dict[str, Any]]:
        """The resource attributes of each metrics export."""
        with self._lock:
            reqs = list(self._metrics)
        return [attributes(rm.resource.attributes) for req in reqs for rm in req.resource_metrics]

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_spans(
        self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Polls traces() until pred(spans) holds; returns the spans or raises AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.traces()
            if pred(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"OTLP spans did not arrive within {timeout}s; got {len(spans)}: "
                    f"{[s['name'] for s in spans]}; decode errors: {self.errors}"
                )
            time.sleep(0.05)

    def wait_for_metrics(
        self, pred: Callable[[dict[str, list[dict[str, Any]]]], bool], timeout: float = 10.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Polls metrics() until pred(metrics) holds; returns them or raises AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.metrics()
            if pred(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"OTLP metrics did not arrive within {timeout}s; got {sorted(metrics)}; "
                    f"decode errors: {self.errors}"
                )
            time.sleep(0.05)
