"""Prometheus metrics of the service, per worker process, labelled by version.

Created on first use inside the worker: BentoML sets `PROMETHEUS_MULTIPROC_DIR` after importing
the service module, and `/metrics` then sums counters and histograms over every worker and lists
gauges per worker (`pid` label), so the serving version of each worker is visible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Any  # Counter(version, status)
    latency: Any  # Histogram(version)
    images: Any  # Counter(version)
    batch_size: Any  # Histogram
    swaps: Any  # Counter(version)
    swap_seconds: Any  # Histogram
    swap_failures: Any  # Counter(version)
    serving: Any  # Gauge(version, engine): 1 for the version this worker serves, and on what
    fallback: Any  # Gauge(version): 1 while this worker serves another version in its place
    shadow_images: Any  # Counter(version, serving): images the shadowed version answered
    shadow_agreed: Any  # Counter(version, serving): of those, top class equal to serving's
    shadow_skipped: Any  # Counter(version): images not mirrored (busy, or not loaded yet)
    pointer_checks: Any  # Counter(cause): reads of the serving pointer, announced or polled
    announcements: Any  # Gauge: 1 while this worker hears Redis announcements (slow poll)

    def set_serving(self, now: tuple[str, str], previous: tuple[str, str] | None) -> None:
        """`now`, `previous`: (version, engine), e.g. ("v3", "onnxruntime:CPUExecutionProvider")."""
        if previous is not None:
            self.serving.labels(version=previous[0], engine=previous[1]).set(0)
        self.serving.labels(version=now[0], engine=now[1]).set(1)


@cache
def service_metrics() -> ServiceMetrics:
    """This process's metrics (one set per process: prometheus refuses duplicates)."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServiceMetrics(
        requests=Counter(
            "janus_classify_requests",
            "classify requests by answering version and status",
            ["version", "status"],
        ),
        latency=Histogram(
            "janus_classify_latency_seconds",
            "classify latency by answering version",
            ["version"],
            buckets=LATENCY_BUCKETS,
        ),
        images=Counter("janus_classified_images", "images classified by version", ["version"]),
        batch_size=Histogram(
            "janus_batch_size",
            "images per model call (adaptive batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
        swaps=Counter("janus_swaps", "hot swaps completed, by new version", ["version"]),
        swap_seconds=Histogram(
            "janus_swap_seconds",
            "load + verify + warm time of a hot swap",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ),
        swap_failures=Counter(
            "janus_swap_failures",
            "versions that failed to load (the old one kept serving)",
            ["version"],
        ),
        shadow_images=Counter(
            "janus_shadow_images",
            "classified images mirrored to the shadowed version, by it and the serving version",
            ["version", "serving"],
        ),
        shadow_agreed=Counter(
            "janus_shadow_agreed",
            "mirrored images on which the shadowed version's top class equals the serving one's",
            ["version", "serving"],
        ),
        shadow_skipped=Counter(
            "janus_shadow_skipped",
            "images chosen for shadowing but not mirrored (shadow tasks busy, or the version "
            "still loading)",
            ["version"],
        ),
        pointer_checks=Counter(
            "janus_pointer_checks",
            "reads of the store's serving pointer by the hot-swap thread, by cause: an "
            "announcement, or the poll",
            ["cause"],
        ),
        announcements=Gauge(
            "janus_announcements_subscribed",
            "1 while this worker process is subscribed to Redis announcements (it then polls "
            "the store every JANUS_SAFETY_POLL_S instead of every JANUS_POLL_S)",
            multiprocess_mode="liveall",
        ),
        fallback=Gauge(
            "janus_serving_fallback",
            "1 while this worker process serves an earlier version in place of this one, which "
            "does not load",
            ["version"],
            multiprocess_mode="liveall",
        ),
        serving=Gauge(
            "janus_serving_version",
            "1 for the version this worker process serves, with the engine and ONNX Runtime "
            "execution provider it runs on",
            ["version", "engine"],
            multiprocess_mode="liveall",
        ),
    )


def exposition() -> bytes:
    """`/metrics`: the `janus_*` metrics of every worker process (from the files in
    `PROMETHEUS_MULTIPROC_DIR`, which `bentoml serve` sets), or of this process alone.

    BentoML's own traffic metrics are off (`service.service`): they label requests by their raw
    path, so any client could add series without bound by asking for made-up paths."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


def forget_this_process() -> None:
    """A worker process that stops takes its live gauges (`janus_serving_version`, …) with it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid())
