"""Jupyter server routes for the TorchReview panel.

Routes (under ``<base_url>/torchreview-lab/``):

- ``POST review``: ``{"path": ..., "standard": ...}`` reviews a file under the server root;
  ``{"cells": [...], "path": ..., "standard": ...}`` reviews live (unsaved) notebook content.
- ``GET rules``: the rule registry; ``GET schema``: the review JSON Schema.

Handlers are thin (:mod:`.handlers`); :class:`~.service.ReviewService` does the work and
:func:`~.handlers.error_status` is the one place that maps errors to HTTP statuses.
"""
from __future__ import annotations

from .service import BadRequest, NotFound, ReviewService

__all__ = ["setup_handlers", "ReviewService", "BadRequest", "NotFound", "NAMESPACE"]

NAMESPACE = "torchreview-lab"


def setup_handlers(serverapp) -> None:
    from jupyter_server.utils import url_path_join

    from .handlers import ReviewHandler, RulesHandler, SchemaHandler

    web_app = serverapp.web_app
    service = ReviewService(serverapp.contents_manager, log=serverapp.log)
    base = url_path_join(web_app.settings["base_url"], NAMESPACE)
    kwargs = {"service": service}
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "review"), ReviewHandler, kwargs),
            (url_path_join(base, "rules"), RulesHandler, kwargs),
            (url_path_join(base, "schema"), SchemaHandler, kwargs),
        ],
    )
    _setup_probe_handlers(serverapp, service, base)


def _setup_probe_handlers(serverapp, service, base) -> None:
    from jupyter_server.utils import url_path_join

    from .probe_handlers import FunctionsHandler, ProbeHandler, ProbesHandler
    from .probes import ProbeService

    probes = ProbeService(serverapp.kernel_manager, getattr(serverapp, "session_manager", None),
                          log=serverapp.log, contents_manager=serverapp.contents_manager)
    kwargs = {"service": service, "probes": probes}
    serverapp.web_app.settings["torchreview_probes"] = probes
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "functions"), FunctionsHandler, kwargs),
            (url_path_join(base, "probes"), ProbesHandler, kwargs),
            (url_path_join(base, r"probes/([0-9a-f]+)"), ProbeHandler, kwargs),
        ],
    )
