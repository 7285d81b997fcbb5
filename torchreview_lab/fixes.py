"""Safe autofixes: apply the replacements rules attach to their reports.

Edits are applied as text edits to the *original* cell sources (never to masked magics), so a
notebook keeps its outputs, metadata and every untouched cell byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from .engine import Review
from .source import SourceDocument


def _edits_by_cell(review: Review) -> Dict[object, List[Tuple[int, int, int, int, str]]]:
    """cell index -> [(line, col, end_line, end_col, new_text)] with 1-based lines and columns."""
    out: Dict[object, List[Tuple[int, int, int, int, str]]] = {}
    for f in review.findings:
        if not f.autofix or f.fix is None or f.end_line is None or f.end_column is None:
            continue
        out.setdefault(f.cell, []).append((f.line, f.column, f.end_line, f.end_column, f.fix.after))
    return out


def apply_edits(source: str, edits: List[Tuple[int, int, int, int, str]]) -> Tuple[str, int]:
    """Apply non-overlapping (line, col, end_line, end_col, text) edits; overlapping ones are skipped."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))

    def offset(line: int, col: int) -> int:
        return starts[min(line - 1, len(lines))] + col - 1

    spans = sorted(((offset(a, b), offset(c, d), t) for a, b, c, d, t in edits), key=lambda e: e[0])
    applied: List[Tuple[int, int, str]] = []
    last_end = -1
    for s, e, t in spans:
        if s >= last_end:
            applied.append((s, e, t))
            last_end = e
    for s, e, t in reversed(applied):
        line_start = source.rfind("\n", 0, s) + 1
        indent = source[line_start:s]
        if "\n" in t and not indent.strip():  # a statement replaced by a block: keep its indentation
            t = t.replace("\n", "\n" + indent)
        source = source[:s] + t + source[e:]
    return source, len(applied)


def fixed_sources(doc: SourceDocument, review: Review) -> Dict[object, str]:
    """New source per cell index (None for a .py file) for the cells that change."""
    out: Dict[object, str] = {}
    for cell_index, edits in _edits_by_cell(review).items():
        cell = next(c for c in doc.cells if c.index == cell_index)
        new, n = apply_edits(cell.source, edits)
        if n and new != cell.source:
            out[cell_index] = new
    return out


def apply_fixes_to_file(path, doc: SourceDocument, review: Review) -> int:
    changes = fixed_sources(doc, review)
    if not changes:
        return 0
    p = Path(path)
    if doc.kind == "python":
        p.write_text(changes[None], encoding="utf-8")
    else:
        nb = json.loads(p.read_text(encoding="utf-8-sig"))
        for idx, text in changes.items():
            nb["cells"][idx]["source"] = text.splitlines(keepends=True)
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return sum(len(v) for v in _edits_by_cell(review).values())
