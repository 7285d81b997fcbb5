"""Thin HTTP handlers: parse the request, await the service, write JSON.

:func:`error_status` is the single place that turns an exception into an HTTP status and a
message: 400 bad input (the message names what is wrong), 404 missing file, 500 only for bugs.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Tuple

import tornado.web
from jupyter_server.base.handlers import APIHandler

from .service import BadRequest, NotFound, ReviewService


def error_status(exc: BaseException) -> Tuple[int, str]:
    """(status, message) for an exception raised while serving a request."""
    from ..config import ConfigError
    from ..source import InputError

    if isinstance(exc, BadRequest):
        return 400, str(exc)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    from .probes import Conflict

    if isinstance(exc, Conflict):  # kernel busy, dead, already probing, or lacks torchreview_lab
        return 409, str(exc)
    if isinstance(exc, InputError):  # the engine's "bad input" (non-Python notebook, invalid JSON, ...)
        return 400, str(exc)
    if isinstance(exc, ConfigError):  # a malformed [tool.torchreview] table: the user's input
        return 400, f"configuration error: {exc}"
    if isinstance(exc, FileNotFoundError):
        return 404, f"file not found: {exc.filename or exc}"
    if isinstance(exc, IsADirectoryError):
        return 400, f"path is a directory, not a notebook or .py file: {exc.filename or exc}"
    if isinstance(exc, tornado.web.HTTPError):  # from the contents manager
        status = exc.status_code if exc.status_code in (400, 403, 404) else 500
        return status, exc.log_message or exc.reason or "error"
    return 500, f"internal error in torchreview_lab: {type(exc).__name__}: {exc}"


class _BaseHandler(APIHandler):
    service: ReviewService

    def initialize(self, service: ReviewService) -> None:
        self.service = service

    def fail(self, exc: BaseException) -> None:
        status, message = error_status(exc)
        if status >= 500:
            self.log.error("torchreview_lab: unexpected error", exc_info=exc)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "status": status}))

    def reply(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def json_body(self) -> Any:
        raw = self.request.body or b""
        if not raw.strip():
            raise BadRequest("request body is empty: expected a JSON object with 'path' or 'cells'")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None


class ReviewHandler(_BaseHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = self.json_body()
            result = await self.service.review(body)
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
            self.fail(exc)
            return
        self.reply(result)


class RulesHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            result = await self.service.rules()
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
            return
        self.reply(result)


class SchemaHandler(_BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        try:
            result = self.service.schema()
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
            return
        self.reply(result)
