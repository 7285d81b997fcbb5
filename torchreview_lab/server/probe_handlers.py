"""Thin handlers for scaling probes in the notebook's kernel (see :mod:`.probes`).

- ``POST functions``  ``{"path"|"kernel_id", "cells"?}`` -> probe-able functions defined in the kernel
- ``POST probes``     ``{"path"|"kernel_id", "function", "sizes", "target", "device", "time_budget", "cells"?}`` -> the probe (with its id)
- ``GET probes/<id>`` -> state, points measured so far, result, findings, error
- ``DELETE probes/<id>`` -> cancel (interrupts the kernel; partial points are kept)
"""
from __future__ import annotations

import tornado.web

from .handlers import _BaseHandler
from .probes import ProbeService


class _ProbeBase(_BaseHandler):
    def initialize(self, service, probes: ProbeService) -> None:  # type: ignore[override]
        super().initialize(service)
        self.probes = probes


class FunctionsHandler(_ProbeBase):
    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = self._object(self.json_body())
            self.reply(await self.probes.functions(body))
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
            self.fail(exc)

    @staticmethod
    def _object(body):
        from .service import BadRequest

        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body


class ProbesHandler(_ProbeBase):
    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = FunctionsHandler._object(self.json_body())
            result = await self.probes.start(body)
            self.set_status(201)
            self.reply(result)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)


class ProbeHandler(_ProbeBase):
    @tornado.web.authenticated
    async def get(self, probe_id: str) -> None:
        try:
            self.reply(self.probes.get(probe_id))
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    @tornado.web.authenticated
    async def delete(self, probe_id: str) -> None:
        try:
            self.reply(await self.probes.cancel(probe_id))
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
