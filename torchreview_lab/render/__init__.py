"""Renderers: one module per output format, each a pure function of a Review."""
from __future__ import annotations

from typing import Callable, Dict

from .json_format import render_json
from .markdown import render_markdown
from .sarif import render_sarif
from .text import render_text

RENDERERS: Dict[str, Callable] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "sarif": render_sarif,
}

__all__ = ["RENDERERS", "render_text", "render_markdown", "render_json", "render_sarif"]
