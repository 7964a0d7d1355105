"""Prometheus metrics of the ingest stages (served by the API's /metrics)."""

import gc
import time

from prometheus_client import Counter, Gauge, Histogram

messages = Counter("tether_ingest_messages_total", "MQTT messages received", ["route"])
fixes_stored = Counter("tether_ingest_fixes_stored_total", "fixes newly stored")
fixes_duplicate = Counter("tether_ingest_fixes_duplicate_total", "fixes already stored")
fixes_outlier = Counter("tether_ingest_fixes_outlier_total", "fixes flagged as impossible jumps")
events_stored = Counter("tether_ingest_events_stored_total", "device events newly stored")
rejects = Counter("tether_ingest_rejects_total", "messages or items rejected", ["reason"])
flush_seconds = Histogram("tether_ingest_flush_seconds", "time to commit one batch",
                          buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
batch_rows = Histogram("tether_ingest_batch_rows", "fixes per committed batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
store_errors = Counter("tether_ingest_store_errors_total", "failed commits (retried)")
state_errors = Counter("tether_ingest_state_errors_total", "failed Redis updates")
mqtt_connects = Counter("tether_ingest_mqtt_connects_total", "MQTT (re)connections")
pending_batches = Gauge("tether_ingest_pending_batches", "batches waiting for the writer")
held_rows = Gauge("tether_ingest_held_rows", "fixes taken by the writer and not yet committed")
judged_ahead = Counter("tether_ingest_judged_ahead_total", "fixes judged before they could be "
                       "stored (database away)")
alerts_changed = Counter("tether_alerts_changed_total", "alerts opened, repeated or cleared "
                         "by the rules", ["action", "type"])
fix_to_alert = Histogram("tether_fix_to_alert_seconds", "from a batch's first message received "
                         "to its alerts committed", buckets=(.05, .1, .2, .3, .5, 1, 2, 5, 10))
dead_letters = Counter("tether_ingest_dead_letters_total", "messages set aside as rejects after "
                       "failing the same non-transient way repeatedly")
rule_state_rebuilt = Counter("tether_rule_state_rebuilt_total", "subject rule states that did "
                             "not decode and were started afresh")
gc_pause = Histogram("tether_gc_pause_seconds", "pauses of Python's cyclic garbage collector "
                     "(the whole worker waits)", ["generation"],
                     buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5))


_gc_started = [0.0]


def _gc_timed(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        gc_pause.labels(str(info.get("generation", "?"))).observe(
            time.perf_counter() - _gc_started[0])


def watch_gc() -> None:
    """Time every collection: a worker holding thousands of subjects' state can pause long
    enough to show in publish → stored latency, and this says whether it does."""
    if _gc_timed not in gc.callbacks:
        gc.callbacks.append(_gc_timed)
