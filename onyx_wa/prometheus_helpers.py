"""Prometheus plumbing shared by every process: private registries and reading scrapes.

Kept apart from :mod:`onyx_wa.metrics` on purpose: importing that module registers the
pipeline's metrics in the default registry, which the ingress, admin and lag exporter processes
have no use for.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.parser import text_string_to_metric_families


def private_registry(*, auto_describe: bool = False) -> CollectorRegistry:
    """A registry of its own for an HTTP app (built several times in one test process), with the
    process_*, python_gc_* and python_info series every process exports."""
    registry = CollectorRegistry(auto_describe=auto_describe)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def sum_samples(exposition: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples matching ``labels`` in a ``/metrics`` scrape's text."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
