"""Shared test fixtures: a Jupyter server with the torchreview_lab extension (pytest-jupyter)."""
from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config(jp_server_config):
    return {"ServerApp": {"jpserver_extensions": {"torchreview_lab": True}}}


def write_notebook(path, cells, language="python"):
    """Write a minimal nbformat-4 notebook; ``cells`` are (cell_type, source) pairs."""
    nb = {
        "cells": [
            {
                "cell_type": kind,
                "id": f"cell-{i}",
                "metadata": {},
                "source": src,
                **({"execution_count": None, "outputs": []} if kind == "code" else {}),
            }
            for i, (kind, src) in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": language, "language": language, "name": language},
            "language_info": {"name": language},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path
