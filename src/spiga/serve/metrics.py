"""The server's Prometheus metrics (text exposition format at `GET /metrics`).

Written with `prometheus_client` rather than by hand: it gets the exposition format,
label escaping and histogram bookkeeping right, is thread-safe (the batcher records
from its worker threads), and its process collector reports the server's resident
memory and CPU time, which the load test reads to check that memory does not grow.
Each app has its own registry, so several apps (tests) can live in one process.

Metrics (all prefixed `spiga_`):
    requests_total{endpoint, status}     requests answered, by route and HTTP status
    errors_total{code}                   error responses, by stable error code
    request_seconds{endpoint}            request latency histogram (receipt to response)
    batch_faces                          faces per forward pass (the dynamic batch size)
    batch_requests                       requests (images) per forward pass
    inference_seconds                    time of one forward pass
    queue_faces                          faces waiting in the queue now
    faces_dropped_total                  detected faces left out beyond max_faces
    backlog_seconds                      estimated time for the accepted work to drain
    expected_faces                       faces of admitted images not yet queued
    stream_frames_total{outcome}         webcam frames answered: faces, skipped, error
    cost_seconds{what}                   running cost estimates: a pass of one face, per face in a
                                         full batch, per megapixel decoded, per megapixel searched
                                         for faces
    process_resident_memory_bytes, ...   the process collector (Linux)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

#: Latency buckets (seconds): 5 ms to 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets (faces or requests per forward pass): exact for small batches.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metrics of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("spiga_requests_total", "Requests answered, by endpoint and HTTP status.",
                                ("endpoint", "status"), registry=self.registry)
        self.errors = Counter("spiga_errors_total", "Error responses, by stable error code.", ("code",),
                              registry=self.registry)
        self.latency = Histogram("spiga_request_seconds", "Request latency from receipt to response.",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_faces = Histogram("spiga_batch_faces", "Faces per forward pass (dynamic batch size).",
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("spiga_batch_requests", "Requests (images) per forward pass.",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("spiga_inference_seconds", "Time of one forward pass.",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_faces = Gauge("spiga_queue_faces", "Faces waiting in the batching queue.",
                                 registry=self.registry)
        self.faces_dropped = Counter("spiga_faces_dropped_total", "Detected faces left out beyond max_faces.",
                                     registry=self.registry)
        self.stream_frames = Counter("spiga_stream_frames_total", "Webcam stream frames answered, by outcome "
                                     "(faces, skipped, error).", ("outcome",), registry=self.registry)
        self.backlog = Gauge("spiga_backlog_seconds", "Estimated time for the accepted work to drain.",
                             registry=self.registry)
        self.expected_faces = Gauge("spiga_expected_faces", "Faces of admitted images not yet queued.",
                                    registry=self.registry)
        self.costs = Gauge("spiga_cost_seconds", "Running cost estimates: a pass of one face (face), per face "
                                                 "in a full batch (face_in_full_batch), per megapixel decoded "
                                                 "(decode_mp), per megapixel searched for faces (detect_mp).",
                           ("what",), registry=self.registry)

    def watch(self, admission) -> None:
        """Read the backlog, expected faces and costs of an `Admission` at each scrape."""
        self.backlog.set_function(admission.drain_seconds)
        self.expected_faces.set_function(lambda: admission.expected_faces)
        costs = admission.costs
        self.costs.labels("face").set_function(lambda: costs.pass_seconds(1))
        self.costs.labels("face_in_full_batch").set_function(
            lambda: costs.pass_seconds(admission.max_batch) / admission.max_batch)
        self.costs.labels("decode_mp").set_function(lambda: costs.decode_per_mp)
        self.costs.labels("detect_mp").set_function(lambda: costs.detect_per_mp)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
