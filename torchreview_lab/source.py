"""Source model: notebooks and .py files as cells of analysable Python with exact line maps.

IPython syntax that is not Python (line magics, cell magics, shell escapes, ``?`` help) is masked
so every line keeps its number: a masked line becomes ``pass`` (or ``name = None`` for an
assignment from a magic/shell escape) at the same indentation. Cells whose cell magic runs another
language (``%%bash``, ``%%html`` ...) are not analysed at all.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union


class InputError(ValueError):
    """Bad input: the message names the input and what is wrong with it."""


# Cell magics whose body is Python and is still analysed.
PYTHON_CELL_MAGICS = frozenset(
    {"time", "timeit", "capture", "prun", "debug", "autoreload", "memit", "mprun", "snakeviz",
     "tensorboard", "load_ext", "skip", "cache", "pyinstrument", "scalene", "torchreview"}
)

_ASSIGN_ESCAPE = re.compile(r"^(\s*)([A-Za-z_][\w\.\[\], ]*?)\s*=\s*(%{1,2}|!{1,2})")
_ESCAPE = re.compile(r"^(\s*)(%{1,2}|!{1,2})")
_HELP = re.compile(r"^(\s*)[\w\.\(\)\[\]]+\?\??\s*$")
_QHELP = re.compile(r"^(\s*)\?\??[\w\.]")


@dataclass
class Cell:
    """One cell (a .py file is a single cell with ``index`` None)."""

    index: Optional[int]
    source: str
    cell_type: str = "code"
    cell_id: Optional[str] = None
    execution_count: Optional[int] = None
    code: str = ""  # masked Python, same number of lines as ``source``
    skipped_reason: Optional[str] = None  # a non-Python cell magic: not analysed
    masked_lines: List[int] = field(default_factory=list)  # 1-based lines that were masked

    @property
    def lines(self) -> List[str]:
        return self.source.splitlines()


@dataclass
class SourceDocument:
    path: str
    kind: str  # "notebook" | "python"
    cells: List[Cell]

    @property
    def code_cells(self) -> List[Cell]:
        return [c for c in self.cells if c.cell_type == "code" and c.skipped_reason is None]


def mask_ipython(source: str) -> "tuple[str, List[int], Optional[str]]":
    """Return (python_code, masked 1-based lines, skip reason) for one cell's source.

    The returned code has exactly as many lines as ``source``.
    """
    lines = source.split("\n")
    masked: List[int] = []
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        name = lines[first].lstrip()[2:].split(None, 1)[0] if lines[first].strip() != "%%" else ""
        if name not in PYTHON_CELL_MAGICS:
            return "\n".join("" for _ in lines), [], f"cell magic %%{name} runs a language other than Python"
        lines[first] = "pass"
        masked.append(first + 1)
    out: List[str] = []
    cont = False  # inside a backslash-continued magic line
    for i, ln in enumerate(lines):
        if i + 1 in masked:
            out.append(ln)
            continue
        if cont:
            out.append("")
            masked.append(i + 1)
            cont = ln.rstrip().endswith("\\")
            continue
        m = _ASSIGN_ESCAPE.match(ln)
        if m and not _is_in_string_context(ln, m.start(3)):
            out.append(f"{m.group(1)}{m.group(2)} = None")
            masked.append(i + 1)
            cont = ln.rstrip().endswith("\\")
            continue
        m = _ESCAPE.match(ln) or _QHELP.match(ln)
        if m or (_HELP.match(ln) and not ln.strip().startswith("#")):
            indent = re.match(r"\s*", ln).group(0)
            out.append(f"{indent}pass")
            masked.append(i + 1)
            cont = ln.rstrip().endswith("\\")
            continue
        out.append(ln)
    return "\n".join(out), masked, None


def _is_in_string_context(line: str, pos: int) -> bool:
    before = line[:pos]
    return before.count('"') % 2 == 1 or before.count("'") % 2 == 1


def _join_source(src: Union[str, Sequence[str], None], what: str) -> str:
    if src is None:
        return ""
    if isinstance(src, str):
        return src
    if isinstance(src, (list, tuple)) and all(isinstance(s, str) for s in src):
        return "".join(src)
    raise InputError(f"{what}: 'source' must be a string or a list of strings, got {type(src).__name__}")


def _make_cell(index: Optional[int], raw: Dict[str, Any], what: str) -> Cell:
    if not isinstance(raw, dict):
        raise InputError(f"{what}: each cell must be an object, got {type(raw).__name__}")
    cell_type = raw.get("cell_type", "code")
    if cell_type not in ("code", "markdown", "raw"):
        raise InputError(f"{what}: unknown cell_type {cell_type!r} (expected code, markdown or raw)")
    source = _join_source(raw.get("source", ""), what)
    cid = raw.get("id")
    if cid is not None and not isinstance(cid, str):
        raise InputError(f"{what}: 'id' must be a string")
    ec = raw.get("execution_count")
    if ec is not None and not isinstance(ec, int):
        ec = None
    cell = Cell(index=index, source=source, cell_type=cell_type, cell_id=cid, execution_count=ec)
    if cell_type == "code":
        cell.code, cell.masked_lines, cell.skipped_reason = mask_ipython(source)
    return cell


_PY_LANGS = {"python", "python3", "ipython", "ipython3", "python2"}


def notebook_language(nb: Dict[str, Any]) -> Optional[str]:
    meta = nb.get("metadata") or {}
    lang = (meta.get("language_info") or {}).get("name") or (meta.get("kernelspec") or {}).get("language")
    return lang.lower() if isinstance(lang, str) else None


def from_cells(cells: Any, path: str, language: Optional[str] = None) -> SourceDocument:
    """Build a document from nbformat-style cell dicts (live editor content)."""
    if not isinstance(cells, list):
        raise InputError(f"{path}: 'cells' must be a list of cell objects, got {type(cells).__name__}")
    if language is not None and language.lower() not in _PY_LANGS:
        raise InputError(f"{path}: notebook language is {language!r}; torchreview reviews Python notebooks only")
    out = [_make_cell(i, c, f"{path} cell {i + 1}") for i, c in enumerate(cells)]
    return SourceDocument(path=path, kind="notebook", cells=out)


def from_notebook_json(nb: Any, path: str) -> SourceDocument:
    if not isinstance(nb, dict) or "cells" not in nb:
        raise InputError(f"{path}: not a Jupyter notebook (no 'cells' list at the top level)")
    major = nb.get("nbformat")
    if major is not None and major < 4:
        try:
            import nbformat

            nb = nbformat.convert(nbformat.from_dict(nb), 4)
        except Exception as exc:  # pragma: no cover - very old notebooks are rare
            raise InputError(f"{path}: cannot read nbformat {major} notebook: {exc}") from exc
    return from_cells(nb["cells"], path, notebook_language(nb))


def from_python(source: str, path: str) -> SourceDocument:
    cell = Cell(index=None, source=source, code=source)
    return SourceDocument(path=path, kind="python", cells=[cell])


def load_path(path: Union[str, "os.PathLike[str]"], display_path: Optional[str] = None) -> SourceDocument:
    """Read a .ipynb or .py file. Raises FileNotFoundError or InputError naming the file."""
    p = Path(path)
    shown = display_path or str(path)
    if not p.exists():
        raise FileNotFoundError(f"{shown}: no such file")
    if p.is_dir():
        raise InputError(f"{shown}: is a directory, expected a .py or .ipynb file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if p.suffix == ".ipynb":
        try:
            nb = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{shown}: not a valid notebook: invalid JSON ({exc})") from exc
        return from_notebook_json(nb, shown)
    if p.suffix in (".py", ".pyw", ".pyi") or p.suffix == "":
        return from_python(text, shown)
    raise InputError(f"{shown}: unsupported file type {p.suffix!r}; expected .py or .ipynb")
