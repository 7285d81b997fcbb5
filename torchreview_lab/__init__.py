"""torchreview_lab: reviews research PyTorch code for correctness, scalability and production readiness.

Static review::

    from torchreview_lab import review_path
    review = review_path("notebook.ipynb", standard="production")

Dynamic review (memory/time vs T, runtime checks): ``scale``, ``check`` and ``compare``.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "review_path": ("torchreview_lab.engine", "review_path"),
    "review_source": ("torchreview_lab.engine", "review_source"),
    "review_cells": ("torchreview_lab.engine", "review_cells"),
    "Finding": ("torchreview_lab.findings", "Finding"),
    "scale": ("torchreview_lab.measure", "scale"),
    "check": ("torchreview_lab.measure", "check"),
    "compare": ("torchreview_lab.measure", "compare"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):  # lazy: importing the package must stay cheap for the server and the CLI
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'torchreview_lab' has no attribute {name!r}")


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "torchreview-lab"}]


def _jupyter_server_extension_points():
    return [{"module": "torchreview_lab"}]


def _load_jupyter_server_extension(serverapp):
    from .server import setup_handlers

    setup_handlers(serverapp)
    serverapp.log.info("torchreview_lab server extension loaded")
