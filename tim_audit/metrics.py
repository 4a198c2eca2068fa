"""``GET /metrics`` in Prometheus's text format, when METRICS = True.

Callbacks by outcome (stored, repeat, conflict, ignored, and each refusal by
its ErrorCode name), how long they took, the size of the log, and each
witness's state. The counters are this process's, or with INGEST_PROCESSES
> 1 every ingest worker's, summed: each counts in files of its own in
PROMETHEUS_MULTIPROC_DIR, which serve sets, and a worker's /metrics is its
writer's. The log sizes are read from the database at each scrape.
"""

import sqlite3

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from .log import db, witnesses
from .ingest.callback import ErrorCode

OUTCOMES = ["stored", "repeat", "conflict", "ignored"] + [
    code.name.lower() for code in ErrorCode if code is not ErrorCode.OK
]

bp = Blueprint("metrics", __name__)


class Metrics:
    def __init__(self, path, witnesses=(), timestampers=(), shared=None):
        """``shared``: the directory where processes count callbacks; the
        registry then sums theirs instead of this one's counts."""
        self.registry = CollectorRegistry()
        counted = self.registry if shared is None else None
        self.callbacks = Counter(
            "tim_audit_callbacks",
            "Callbacks answered, by outcome.",
            ["outcome"],
            registry=counted,
        )
        for outcome in OUTCOMES:
            self.callbacks.labels(outcome)
        self.seconds = Histogram(
            "tim_audit_callback_seconds",
            "Time from receiving a callback to answering it.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0),
            registry=counted,
        )
        if shared is not None:
            MultiProcessCollector(self.registry, path=shared)
        self.registry.register(_LogSize(path))
        self.registry.register(_Publishers(path, witnesses, timestampers))

    def observe(self, outcome, seconds):
        self.callbacks.labels(outcome).inc()
        self.seconds.observe(seconds)


class _LogSize:
    """Rows in the log, read at scrape time (ids run from 1 without gaps)."""

    def __init__(self, path):
        self.path = path

    def collect(self):
        try:
            conn = db.connect(self.path, readonly=True)
            try:
                events, quarantined = conn.execute(
                    "SELECT (SELECT coalesce(max(id), 0) FROM event),"
                    " (SELECT coalesce(max(id), 0) FROM quarantine)"
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return
        yield GaugeMetricFamily("tim_audit_events", "Events in the audit log.", value=events)
        yield GaugeMetricFamily(
            "tim_audit_quarantined", "Deliveries in quarantine.", value=quarantined
        )


class _Publishers:
    """The state of the threads that carry checkpoints off the box: each
    witness's (witnesses.py) size it last cosigned and the submissions in a
    row it refused or missed; the timestamp requests in a row that failed
    (timestamps.py)."""

    def __init__(self, path, witnesses, timestampers):
        self.path = path
        self.witnesses = witnesses
        self.timestampers = timestampers

    def collect(self):
        cosigned = GaugeMetricFamily(
            "tim_audit_witness_cosigned_size",
            "Leaves of the newest checkpoint the witness cosigned, as stored (-1: unreadable).",
            labels=["witness"],
        )
        failures = GaugeMetricFamily(
            "tim_audit_witness_failures",
            "Submissions in a row the witness refused or did not answer.",
            labels=["witness"],
        )
        sizes = {}
        try:
            conn = db.connect(self.path, readonly=True)
            try:
                sizes = {w.key: witnesses.last_cosigned(conn, w.key) for w in self.witnesses}
            finally:
                conn.close()
        except sqlite3.Error:
            pass
        for witness in self.witnesses:
            cosigned.add_metric([witness.name], sizes.get(witness.key, -1))
            failures.add_metric([witness.name], witness.failures)
        yield cosigned
        yield failures
        for timestamper in self.timestampers:
            yield GaugeMetricFamily(
                "tim_audit_timestamp_failures",
                "Timestamp requests in a row that the TSA refused or did not answer.",
                value=timestamper.failures,
            )


@bp.get("/metrics")
def metrics():
    writers = current_app.extensions.get("tim_audit.writers_metrics")  # an ingest worker's
    if writers is not None:
        return Response(writers(), mimetype=CONTENT_TYPE_LATEST)
    registry = current_app.extensions["tim_audit.metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
