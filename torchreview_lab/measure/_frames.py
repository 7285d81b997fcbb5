"""Find the user's frame: the innermost frame outside torch, torchreview_lab and the standard library.

Runtime checks report findings at the line of the *user's* code that caused them, not at the torch
internals or at the checker's own frames.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import types
from typing import Optional, Tuple

import torch

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # torchreview_lab/
_STDLIB_DIRS = tuple(
    os.path.abspath(p) + os.sep
    for p in {sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib")}
    if p
)
_SKIP_CACHE: dict = {}

Site = Tuple[str, int, str]  # (path, line, function name)


def _skipped(filename: str) -> bool:
    hit = _SKIP_CACHE.get(filename)
    if hit is not None:
        return hit
    if filename.startswith("<frozen") or filename.startswith("<string>"):
        skip = True
    else:
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        skip = (
            path.startswith(_TORCH_DIR)
            or path.startswith(_PKG_DIR)
            or (path.startswith(_STDLIB_DIRS) and "site-packages" not in path)
            or "/site-packages/numpy/" in path
        )
    _SKIP_CACHE[filename] = skip
    return skip


def user_frame(start: Optional[types.FrameType] = None) -> Optional[types.FrameType]:
    """The innermost frame (from ``start`` outwards) that belongs to user code, or None."""
    f = start if start is not None else sys._getframe(1)
    while f is not None:
        if not _skipped(f.f_code.co_filename):
            return f
        f = f.f_back
    return None


def user_site(start: Optional[types.FrameType] = None) -> Optional[Site]:
    f = user_frame(start if start is not None else sys._getframe(1))
    if f is None:
        return None
    return (f.f_code.co_filename, f.f_lineno, f.f_code.co_name)


def site_from_traceback(tb: Optional[types.TracebackType]) -> Optional[Site]:
    """The innermost user frame of a traceback (for exceptions raised inside torch)."""
    best = None
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if not _skipped(fn):
            best = (fn, tb.tb_lineno, tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return best


def source_line(path: str, line: int) -> str:
    import linecache

    return linecache.getline(path, line).strip()


def def_site(obj) -> Optional[Site]:
    """Where a function or class is defined."""
    import inspect

    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        path = inspect.getsourcefile(target) or inspect.getfile(target)
        lines, line = inspect.getsourcelines(target)
        for i, text in enumerate(lines):  # skip decorators: point at the def/class line
            if text.lstrip().startswith(("def ", "async def ", "class ")):
                line += i
                break
    except (TypeError, OSError):
        code = getattr(target, "__code__", None)
        if code is None:
            return None
        path, line = code.co_filename, code.co_firstlineno
    return (path, max(int(line), 1), getattr(target, "__name__", type(target).__name__))
