"""The Faust app the benchmarks' baselines and floors run: the worker's broker settings and
nothing of this project's stages, guards or codecs.

One place, so that every baseline stays like for like with the worker it is compared with
(same broker settings, the same fix-ups on the embedded broker).
"""

from __future__ import annotations

from typing import Any


def bare_app(settings: Any, app_id: str, datadir: str, *, eager: bool = False) -> Any:
    """A stock Faust app; ``eager``: with the worker's eager delivery
    (``streams.eager_delivery``), for a like-for-like baseline."""
    import faust

    from onyx_wa.kafka import faust_broker_settings, patch_faust_for_tansu

    if settings.tansu:
        patch_faust_for_tansu()
    app = faust.App(
        app_id,
        **faust_broker_settings(settings),
        store="memory://",
        datadir=str(settings.data_dir / datadir),
        web_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
    )
    if eager:
        from streams import eager_delivery

        eager_delivery.install(app)
    return app
