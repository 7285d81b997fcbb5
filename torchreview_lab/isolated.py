"""Isolated probes: the definitions a notebook needs, without its side effects.

For users who do not want their kernel touched, the probe runs in a fresh scratch kernel that
first re-runs the notebook's *definition* statements: imports, function and class definitions, and
assignments of plain values (``K = 8``, ``device = torch.device("cuda")``). Training loops, data
loading, plots and anything else at top level are left out. This module only parses; it runs nothing.
"""
from __future__ import annotations

import ast
from typing import Any, Dict, List, Optional, Tuple

from .source import mask_ipython

# Calls allowed on the right-hand side of a kept assignment: cheap constructors with no side effects.
_PURE_CALLS = {"device", "dtype", "dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool",
               "range", "slice", "namedtuple", "getLogger", "Path", "partial", "field", "TypeVar"}


def _pure(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name not in _PURE_CALLS:
                return False
        if isinstance(n, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return False
    return True


def _keep(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        return _pure(stmt.value)
    if isinstance(stmt, ast.If):  # `if torch.cuda.is_available(): device = ...` style configuration
        return all(_keep(s) for s in stmt.body + stmt.orelse)
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):  # docstrings
        return True
    return False


def definition_cells(cells: List[Dict[str, Any]]) -> List[Tuple[int, str, List[int]]]:
    """Per code cell that defines something: (cell index, definition source, line map), where
    ``line_map[k]`` is the 1-based line in the original cell of line ``k + 1`` of the source. Each
    piece runs as its own execution, so tracebacks and findings map back to the cell and line."""
    out: List[Tuple[int, str, List[int]]] = []
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type", "code") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        code, _, skipped = mask_ipython(src)
        if skipped:
            continue
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        lines = code.splitlines()
        text: List[str] = []
        line_map: List[int] = []
        for stmt in tree.body:
            if not _keep(stmt):
                continue
            first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            for ln in range(first, stmt.end_lineno + 1):
                text.append(lines[ln - 1])
                line_map.append(ln)
        if text:
            out.append((i, "\n".join(text) + "\n", line_map))
    return out


def definition_source(cells: List[Dict[str, Any]]) -> str:
    """All definition statements of a notebook as one Python source (for display and tests)."""
    return "".join(f"# --- from cell {i + 1}\n{code}" for i, code, _ in definition_cells(cells))
