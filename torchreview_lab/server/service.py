"""The one object that does the server's work: validate a request, locate the file under the
server root, run the (CPU-bound) review off the event loop, and shape the JSON reply.

Errors are raised, never written: :class:`BadRequest` (400), :class:`NotFound` (404), the
engine's ``InputError`` (400) and ``FileNotFoundError`` (404); the handlers map them to statuses
in one place (:func:`torchreview_lab.server.handlers.error_status`).
"""
from __future__ import annotations

import asyncio
import copy
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..findings import SEVERITIES, STANDARDS, review_json_schema


class BadRequest(ValueError):
    """The request is malformed; the message names what is wrong."""


class NotFound(LookupError):
    """The file does not exist under the server root (or is not reachable from it)."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_api_path(path: Any, what: str = "path") -> str:
    """A normalised path relative to the server root, or :class:`BadRequest`.

    Absolute paths, ``~`` and ``..`` segments are refused outright: a review can only read files
    under the root the server was started in.
    """
    if not isinstance(path, str) or not path.strip():
        raise BadRequest(f"'{what}' must be a non-empty string (a path relative to the server root); got {path!r}")
    if "\x00" in path:
        raise BadRequest(f"'{what}' contains a NUL character")
    p = path.replace("\\", "/")
    if p.startswith("/") or p.startswith("~") or _DRIVE.match(p):
        raise BadRequest(f"'{what}' {path!r} is absolute: give a path relative to the server root")
    parts = [s for s in p.split("/") if s not in ("", ".")]
    if ".." in parts:
        raise BadRequest(f"'{what}' {path!r} leaves the server root ('..' is not allowed)")
    if not parts:
        raise BadRequest(f"'{what}' {path!r} names the server root, not a file")
    return "/".join(parts)


def _severities(rule: Any) -> Dict[str, Optional[str]]:
    sev = getattr(rule, "severity", None)
    if isinstance(sev, dict):
        return {s: sev.get(s) for s in STANDARDS}
    return {s: sev for s in STANDARDS}


def _first_paragraph(doc: Optional[str]) -> str:
    if not doc:
        return ""
    text = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in text.splitlines())


FORMATS = ("json", "markdown")


@dataclass
class RuleOptions:
    """Rule selection from the request (the panel's settings), on top of the project's config."""

    select: List[str]
    ignore: List[str]
    severity: Dict[str, str]

    def config(self, base: Any) -> Any:
        """``base`` (a project Config, or None) with the request's severity overrides applied."""
        from ..config import Config

        cfg = copy.copy(base) if base is not None else Config()
        cfg.severity = {**cfg.severity, **self.severity}
        return cfg


def finish_review(review: Any, os_path: Optional[str], api_path: str, fmt: str) -> Dict[str, Any]:
    """The reply for a finished review: paths as the client names them, and the Markdown report
    when ``fmt`` is "markdown"."""
    if os_path and os_path != api_path:
        for f in review.findings:
            if f.path == os_path:
                f.path = api_path
        for doc in getattr(review, "documents", []):
            if getattr(doc, "path", None) == os_path:
                doc.path = api_path
        review.observations = [s.replace(os_path, api_path) for s in review.observations]
        review.errors = [s.replace(os_path, api_path) for s in review.errors]
    data = review.to_json()
    if fmt == "markdown":
        from ..render.markdown import render_markdown

        data["markdown"] = render_markdown(review)
    return data


class ReviewService:
    """Reviews files under the contents manager's root and live notebook cells."""

    def __init__(self, contents_manager: Any, log: Any = None, max_workers: int = 2) -> None:
        self.cm = contents_manager
        self.log = log
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="torchreview")

    # -- requests ----------------------------------------------------------------------------
    async def review(self, body: Any) -> Dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest(f"request body must be a JSON object with 'path' or 'cells'; got {type(body).__name__}")
        standard = body.get("standard")  # None: the project's [tool.torchreview] standard, else research
        if standard is not None:
            if not isinstance(standard, str) or standard.lower() not in STANDARDS:
                raise BadRequest(f"unknown standard {standard!r}: expected one of {', '.join(STANDARDS)}")
            standard = standard.lower()
        ignore = body.get("ignore") or []
        if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
            raise BadRequest(f"'ignore' must be a list of rule codes (e.g. [\"TR101\"]); got {ignore!r}")
        language = body.get("language")
        if language is not None and not isinstance(language, str):
            raise BadRequest(f"'language' must be a string such as 'python'; got {language!r}")
        fmt = body.get("format", "json")
        if fmt not in FORMATS:
            raise BadRequest(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
        select = body.get("select") or []
        if not isinstance(select, list) or not all(isinstance(c, str) for c in select):
            raise BadRequest(f"'select' must be a list of rule codes or prefixes (e.g. [\"TR1\"]); got {select!r}")
        severity = body.get("severity") or {}
        if not isinstance(severity, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.lower() in SEVERITIES for k, v in severity.items()):
            raise BadRequest(f"'severity' must map rule codes to one of {', '.join(SEVERITIES)}; got {severity!r}")
        finish = partial(finish_review, fmt=fmt)
        options = RuleOptions([c.upper() for c in select], [c.upper() for c in ignore],
                              {k.upper(): v.lower() for k, v in severity.items()})

        from ..config import ConfigError
        from ..source import InputError

        try:
            if "cells" in body and body["cells"] is not None:
                return await self._review_cells(body["cells"], body.get("path"), standard, language, finish, options)
            if body.get("path") is not None:
                return await self._review_file(body["path"], standard, finish, options)
        except (InputError, ConfigError) as exc:  # user errors: name files as the client sees them
            scrubbed = self._scrub(str(exc))
            if scrubbed == str(exc):
                raise
            raise type(exc)(scrubbed) from None
        raise BadRequest(
            "request body needs 'path' (a file under the server root) or 'cells' (notebook cells to review)"
        )

    def _scrub(self, message: str) -> str:
        """``message`` with the server root's OS location removed (paths relative to the root)."""
        root = getattr(self.cm, "root_dir", None)
        if not root:
            return message
        for prefix in {os.path.realpath(root), os.path.abspath(root)}:
            message = message.replace(prefix + os.sep, "")
        return message

    async def rules(self) -> Dict[str, Any]:
        try:
            from ..rules import all_rules
        except ImportError:  # the registry is optional for the server
            rules: List[Any] = []
        else:
            rules = await self._run(all_rules)
        return {
            "rules": [
                {
                    "code": r.code,
                    "title": getattr(r, "title", ""),
                    "category": getattr(r, "category", ""),
                    "severities": _severities(r),
                    "autofix": bool(getattr(r, "autofix", False)),
                    "summary": _first_paragraph(r.__doc__),
                }
                for r in rules
            ],
            "standards": list(STANDARDS),
            "severities": list(SEVERITIES),
        }

    def schema(self) -> Dict[str, Any]:
        return review_json_schema()

    # -- work ----------------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def _os_path(self, api_path: str) -> Optional[str]:
        """The OS path of ``api_path`` for a file-backed contents manager (None otherwise).

        Follows symlinks and refuses anything whose real location is outside the real root.
        """
        root = getattr(self.cm, "root_dir", None)
        get_os_path = getattr(self.cm, "_get_os_path", None)
        if not root or get_os_path is None:
            return None
        os_path = get_os_path(api_path)  # raises HTTPError(404) for paths outside the root
        real_root = os.path.realpath(root)
        real = os.path.realpath(os_path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise NotFound(f"{api_path!r} is outside the server root")
        return os_path

    def _check_visible(self, api_path: str, os_path: str) -> None:
        from jupyter_core.paths import is_hidden

        if not getattr(self.cm, "allow_hidden", False) and is_hidden(os_path, os.path.abspath(self.cm.root_dir)):
            raise NotFound(f"{api_path!r} is hidden (or inside a hidden folder) and cannot be reviewed")

    async def _review_file(self, path: Any, standard: Optional[str], finish: Callable[..., Dict[str, Any]],
                           options: "RuleOptions") -> Dict[str, Any]:
        api_path = check_api_path(path)
        os_path = self._os_path(api_path)
        if os_path is None:
            return await self._review_via_contents(api_path, standard, finish, options)
        if not os.path.exists(os_path):
            raise NotFound(f"no such file under the server root: {api_path}")
        if os.path.isdir(os_path):
            raise BadRequest(f"{api_path!r} is a directory: give a notebook (.ipynb) or a Python file (.py)")
        self._check_visible(api_path, os_path)
        from ..engine import review_path

        return await self._run(_review_file_sync, review_path, os_path, api_path, standard, finish, options)

    async def _review_via_contents(
        self, api_path: str, standard: Optional[str], finish: Callable[..., Dict[str, Any]], options: "RuleOptions"
    ) -> Dict[str, Any]:
        """Non file-backed contents managers: fetch the content, review a temporary copy."""
        from jupyter_server.utils import ensure_async

        try:
            model = await ensure_async(self.cm.get(api_path, content=True))
        except Exception as exc:  # the contents manager's own HTTPError(404) etc.
            if getattr(exc, "status_code", None) == 404:
                raise NotFound(f"no such file under the server root: {api_path}") from None
            raise
        if model["type"] == "directory":
            raise BadRequest(f"{api_path!r} is a directory: give a notebook (.ipynb) or a Python file (.py)")
        if model["type"] == "notebook":
            import nbformat

            text = nbformat.writes(nbformat.from_dict(model["content"]))
        elif model.get("format") == "text":
            text = model["content"]
        else:
            raise BadRequest(f"{api_path!r} is a binary file, not a notebook or Python source")
        from ..engine import review_path

        with tempfile.TemporaryDirectory(prefix="torchreview-") as tmp:
            tmp_path = os.path.join(tmp, os.path.basename(api_path))
            with open(tmp_path, "w", encoding="utf-8") as fh:
                fh.write(text)
            return await self._run(_review_file_sync, review_path, tmp_path, api_path, standard, finish, options)

    async def _review_cells(
        self, cells: Any, path: Any, standard: Optional[str], language: Optional[str],
        finish: Callable[..., Dict[str, Any]], options: "RuleOptions",
    ) -> Dict[str, Any]:
        if not isinstance(cells, list):
            raise BadRequest(
                f"'cells' must be a list of notebook cells (objects with cell_type and source); got {type(cells).__name__}"
            )
        for i, cell in enumerate(cells):
            if not isinstance(cell, dict):
                raise BadRequest(f"cells[{i}] must be an object with 'cell_type' and 'source'; got {type(cell).__name__}")
        api_path = check_api_path(path if path is not None else "untitled.ipynb")
        # Project settings ([tool.torchreview] in a pyproject.toml above the notebook) apply to
        # live content as they do to the saved file.
        config = None
        try:
            os_path = self._os_path(api_path)
        except Exception:  # noqa: BLE001 - the path is only a label here
            os_path = None
        if os_path is not None:
            from ..config import find_config

            config = await self._run(find_config, Path(os_path))
        from ..engine import review_cells

        def work() -> Dict[str, Any]:
            review = review_cells(cells, api_path, standard=standard, language=language,
                                  config=options.config(config), select=options.select, ignore=options.ignore)
            return finish(review, None, api_path)

        return await self._run(work)


def _relabel_error(exc: BaseException, os_path: str, api_path: str) -> BaseException:
    """The same error with the server's OS path replaced by the client's API path."""
    if os_path != api_path and os_path in str(exc):
        try:
            return type(exc)(str(exc).replace(os_path, api_path))
        except Exception:  # noqa: BLE001 - exotic exception signatures: keep the original
            return exc
    return exc


def _review_file_sync(
    review_path: Callable[..., Any], os_path: str, api_path: str, standard: Optional[str],
    finish: Callable[..., Dict[str, Any]], options: "RuleOptions",
) -> Dict[str, Any]:
    from ..config import find_config
    from ..source import InputError

    try:
        config = options.config(find_config(Path(os_path)))
        review = review_path(os_path, standard=standard, config=config, select=options.select, ignore=options.ignore)
    except (InputError, FileNotFoundError) as exc:
        new = _relabel_error(exc, os_path, api_path)
        if new is exc:
            raise
        raise new from None
    return finish(review, os_path, api_path)
