"""The garbage collector's settings for a long-running worker process.

Why: with CPython's defaults a busy worker spends a large share of its time in the cyclic
collector. A young collection runs every 700 net allocations, so the objects of work in flight
(the egress sender keeps up to 256 sends open, each with its task, futures and coroutine frames
alive for tens of milliseconds) survive two young collections and are promoted to the oldest
generation. Promotions soon trigger a full collection, and a full collection walks every object
the process holds: imported modules, the Faust app, the tables, nearly none of which ever becomes
garbage. Measured in ``bench egress`` (docs/egress.md): ~9% of the worker's wall time in the
collector, and 20-30% more CPU per send than with the two settings below.

- :func:`gc.freeze` after start-up moves every object that exists then into a permanent
  generation the collector no longer walks (what CPython's documentation advises for
  long-running servers that build their state once).
- A higher young-generation threshold lets short-lived objects die young, before any collection
  sees them, so fewer are promoted. The cost is a few MB more between collections.

Reference cycles created later are still collected; only what existed at the freeze is never
freed, and that is the process's own code and configuration.
"""

from __future__ import annotations

import gc


def tune_gc(young_threshold: int) -> bool:
    """Freeze what exists now and raise the young generation's threshold to ``young_threshold``.

    Called once a service has started (its modules imported, its app built). Calling it again
    freezes what was built since. Returns False, changing nothing, when ``young_threshold`` is 0.
    """
    if young_threshold <= 0:
        return False
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    return True
