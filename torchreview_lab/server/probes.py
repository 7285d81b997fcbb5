"""Scaling probes in the notebook's own kernel.

The server never executes user code: :class:`ProbeService` sends one silent, history-free
expression to the kernel (see :mod:`torchreview_lab.kernel_side`) through the server's kernel
manager, reusing one client per kernel, and reads progress lines from the iopub stream of its own
request. Progress is polled by the panel (``GET probes/<id>``): polling needs no extra protocol,
survives proxies and reconnects, and a probe takes seconds to minutes, so a 0.5 s poll costs
nothing; the poll returns every point measured so far, so a reconnecting panel loses nothing.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .service import BadRequest, NotFound

MARK = "\x1eTORCHREVIEW "
_MAX_PROBES = 50


class Conflict(RuntimeError):
    """The kernel cannot take a probe now (busy, dead, or already probing): HTTP 409."""


@dataclass
class Probe:
    id: str
    kernel_id: str
    function: str
    spec: Dict[str, Any]
    cells: Optional[List[Dict[str, Any]]] = None
    path: Optional[str] = None
    state: str = "running"  # running | done | error | cancelled
    points: List[Dict[str, Any]] = field(default_factory=list)
    result: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, Any]] = None
    findings: List[Dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    task: Optional[asyncio.Task] = None
    isolated: bool = False  # runs in a scratch kernel that is shut down afterwards
    scratch_sources: Dict[str, Any] = field(default_factory=dict)
    check_findings: List[Dict[str, Any]] = field(default_factory=list)  # runtime checks (spec "checks")
    notes: List[str] = field(default_factory=list)  # isolated: code -> (cell, line map)

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id, "kernel_id": self.kernel_id, "function": self.function, "state": self.state,
            "points": list(self.points), "result": self.result, "error": self.error, "notes": self.notes,
            "findings": self.findings + self.check_findings,
            "spec": self.spec, "isolated": self.isolated, "started": self.started, "finished": self.finished,
            "elapsed": (self.finished or time.time()) - self.started,
        }


def _lines(text: str):
    """Lines without the leading blank lines IPython's input transformer drops, and how many were dropped."""
    lines = text.rstrip().split("\n")
    k = 0
    while k < len(lines) and not lines[k].strip():
        k += 1
    return lines[k:], k


def _same_cell(kernel_lines, cell_lines) -> bool:
    """IPython runs a transformed cell: magics become ``get_ipython()...`` calls, one line each."""
    if len(kernel_lines) != len(cell_lines):
        return False
    for k, c in zip(kernel_lines, cell_lines):
        if k.rstrip() != c.rstrip() and not (c.lstrip().startswith(("%", "!")) or "get_ipython()" in k):
            return False
    return True


def locate_in_cells(cells: Optional[List[Dict[str, Any]]], cell_source: Optional[str], line: Optional[int],
                    scratch: Optional[Dict[str, Any]] = None):
    """(cell index, line in that cell) of code the kernel ran, found by matching its source text
    with the notebook's cells (or, in isolated mode, with the definitions re-run from a cell, mapped
    back through their line map). (None, None) when no cell matches."""
    if not cells or not cell_source:
        return None, None
    want = cell_source.rstrip()
    if scratch and want in scratch:
        index, line_map = scratch[want]
        return index, (line_map[line - 1] if line and 0 < line <= len(line_map) else line)
    k_lines, k_skip = _lines(cell_source)
    for i, c in enumerate(cells):
        if c.get("cell_type", "code") != "code":
            continue
        src = c.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        c_lines, c_skip = _lines(src)
        if _same_cell(k_lines, c_lines):
            return i, (line - k_skip + c_skip if line else line)
    return None, None


class _Reader:
    """Splits a stdout stream into MARK-prefixed JSON events."""

    def __init__(self, on_event):
        self.buf = ""
        self.on_event = on_event

    def feed(self, text: str) -> None:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            i = line.find(MARK)
            if i >= 0:
                try:
                    self.on_event(json.loads(line[i + len(MARK):]))
                except ValueError:
                    pass


class ProbeService:
    def __init__(self, kernel_manager, session_manager=None, log=None, contents_manager=None):
        self.km = kernel_manager
        self.sm = session_manager
        self.cm = contents_manager
        self.log = log
        self.clients: Dict[str, Any] = {}
        self.probes: Dict[str, Probe] = {}
        self.running: Dict[str, str] = {}  # kernel id -> probe id

    # -- kernels -----------------------------------------------------------------------------
    async def kernel_for(self, body: Dict[str, Any]) -> str:
        kid = body.get("kernel_id")
        if kid is not None and not isinstance(kid, str):
            raise BadRequest("'kernel_id' must be a string")
        if not kid:
            path = body.get("path")
            if not isinstance(path, str) or not path:
                raise BadRequest("give 'kernel_id' or the notebook 'path' whose session's kernel to use")
            if self.sm is None:
                raise NotFound(f"no session for {path!r}")
            for s in await self.sm.list_sessions():
                if s.get("path") == path and s.get("kernel"):
                    kid = s["kernel"]["id"]
                    break
            else:
                raise NotFound(f"no running kernel for notebook {path!r}: start the notebook's kernel first")
        if kid not in self.km:
            raise NotFound(f"no kernel with id {kid!r} (it may have been shut down)")
        return kid

    async def _client(self, kid: str):
        kernel = self.km.get_kernel(kid)
        alive = kernel.is_alive()
        if asyncio.iscoroutine(alive):
            alive = await alive
        if not alive:
            self.clients.pop(kid, None)
            raise Conflict(f"kernel {kid} is dead: restart it and run the notebook's cells again")
        client = self.clients.get(kid)
        if client is None:
            # A Session of our own: ``kernel.client()`` would share the manager's session id, hence
            # the ZMQ identity of any other client made the same way, and the kernel would route
            # replies to whichever connected last.
            from jupyter_client.session import Session

            session = Session(key=kernel.session.key, signature_scheme=kernel.session.signature_scheme,
                              username="torchreview")
            client = kernel.client(session=session)
            client.start_channels()
            await client.wait_for_ready(timeout=30)
            self.clients[kid] = client
        return client

    async def _check_idle(self, kid: str) -> None:
        if kid in self.running and self.probes[self.running[kid]].state == "running":
            raise Conflict(f"a probe is already running in kernel {kid}: wait for it or cancel it")
        kernel = self.km.get_kernel(kid)
        # the server learns "idle" from the kernel's iopub a moment after a cell finishes: allow 1 s
        for _ in range(10):
            if getattr(kernel, "execution_state", "idle") != "busy":
                return
            await asyncio.sleep(0.1)
        if getattr(kernel, "execution_state", "idle") == "busy":
            raise Conflict("the kernel is busy running a cell: wait for it to finish (or interrupt it) and try again")

    async def _execute(self, kid: str, code: str, on_event, timeout: Optional[float]):
        client = await self._client(kid)
        reader = _Reader(on_event)

        def hook(msg):
            if msg.get("msg_type") == "stream" and msg["content"].get("name") == "stdout":
                reader.feed(msg["content"].get("text", ""))

        reply = await client.execute_interactive(code, silent=True, store_history=False, allow_stdin=False,
                                                 output_hook=hook, timeout=timeout)
        reader.feed("\n")
        return reply["content"]

    @staticmethod
    def _import_error(content: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if content.get("status") != "error":
            return None
        ename, evalue = content.get("ename", ""), content.get("evalue", "")
        if ename in ("ModuleNotFoundError", "ImportError") and "torchreview_lab" in evalue:
            return {"kind": "not-importable", "message":
                    "torchreview_lab is not importable in this kernel's environment: install it there "
                    "(pip install torchreview_lab) or pick a kernel from the environment JupyterLab runs in"}
        if ename == "KeyboardInterrupt":
            return {"kind": "cancelled", "message": "interrupted"}
        return {"kind": "kernel", "message": f"{ename}: {evalue}"}

    # -- functions ---------------------------------------------------------------------------
    async def functions(self, body: Dict[str, Any]) -> Dict[str, Any]:
        kid = await self.kernel_for(body)
        await self._check_idle(kid)
        events: List[Dict[str, Any]] = []
        code = '__import__("torchreview_lab.kernel_side", fromlist=["_"]).list_functions(get_ipython().user_ns)'
        content = await self._execute(kid, code, events.append, timeout=30)
        err = self._import_error(content)
        if err:
            raise Conflict(err["message"])
        fns = next((e["functions"] for e in events if e.get("event") == "functions"), [])
        cells = body.get("cells")
        for f in fns:
            cell, line = locate_in_cells(cells, f.pop("cell_source", None), f["site"]["line"])
            f["cell"], f["line"] = cell, line
        return {"kernel_id": kid, "functions": fns}

    # -- probes ------------------------------------------------------------------------------
    def _spec(self, body: Dict[str, Any]) -> Dict[str, Any]:
        fn = body.get("function")
        if not isinstance(fn, str) or not fn.isidentifier():
            raise BadRequest(f"'function' must be the name of a function defined in the notebook; got {fn!r}")
        sizes = body.get("sizes", [256, 512, 1024, 2048])
        if not isinstance(sizes, list) or not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise BadRequest(f"'sizes' must be a non-empty list of positive integers; got {sizes!r}")
        if len(sizes) > 24:
            raise BadRequest("'sizes' lists more than 24 sizes")
        spec: Dict[str, Any] = {"function": fn, "sizes": sorted(set(sizes))}
        for key, kind in (("target", int), ("budget_bytes", int), ("time_budget", (int, float))):
            v = body.get(key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, kind) or v <= 0:
                    raise BadRequest(f"'{key}' must be a positive number; got {v!r}")
                spec[key] = v
        dev = body.get("device", "auto")
        if dev not in ("auto", "cpu", "cuda"):
            raise BadRequest(f"'device' must be auto, cpu or cuda; got {dev!r}")
        spec["device"] = dev
        spec["backward"] = bool(body.get("backward", False))
        spec["checks"] = bool(body.get("checks", False))
        frac = body.get("budget_fraction")
        if frac is not None:
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
                raise BadRequest(f"'budget_fraction' must be a number in (0, 1] (of the device's free memory); got {frac!r}")
            if "budget_bytes" not in spec:
                spec["budget_fraction"] = float(frac)
        spec.setdefault("time_budget", 120.0)
        return spec

    async def start(self, body: Dict[str, Any]) -> Dict[str, Any]:
        spec = self._spec(body)
        isolated = bool(body.get("isolated", False))
        cells = body.get("cells") if isinstance(body.get("cells"), list) else None
        if isolated:
            if cells is None:
                raise BadRequest("isolated mode needs the notebook's 'cells' (a list) to re-run its definitions")
            kernel_name = body.get("kernel_name")
            if kernel_name is not None and not isinstance(kernel_name, str):
                raise BadRequest("'kernel_name' must be a string")
            kid = await self.km.start_kernel(**({"kernel_name": kernel_name} if kernel_name else {}))
        else:
            kid = await self.kernel_for(body)
            await self._check_idle(kid)
            await self._client(kid)  # dead kernel -> 409 now, not later
        probe = Probe(id=uuid.uuid4().hex[:12], kernel_id=kid, function=spec["function"], spec=spec,
                      cells=cells, isolated=isolated,
                      path=body.get("path") if isinstance(body.get("path"), str) else None)
        self.probes[probe.id] = probe
        self.running[kid] = probe.id
        self._trim()
        probe.task = asyncio.ensure_future(self._run(probe))
        return probe.to_json()

    def _trim(self) -> None:
        done = [p for p in self.probes.values() if p.state != "running"]
        for p in sorted(done, key=lambda p: p.started)[: max(0, len(self.probes) - _MAX_PROBES)]:
            self.probes.pop(p.id, None)

    async def _run(self, probe: Probe) -> None:
        code = ('__import__("torchreview_lab.kernel_side", fromlist=["_"]).run_probe(get_ipython().user_ns, '
                + repr(json.dumps(probe.spec)) + ")")

        def on_event(ev: Dict[str, Any]) -> None:
            kind = ev.get("event")
            if kind == "point":
                probe.points.append(ev["point"])
            elif kind == "result":
                probe.result = ev["result"]
            elif kind == "cancelled":
                probe.state = "cancelled"
            elif kind == "error":
                probe.error = self._map_error(probe, ev)
            elif kind == "checks":
                probe.check_findings = [self._map_finding(probe, f) for f in ev.get("findings", [])]
                probe.notes = list(ev.get("notes", []))

        grace = 30.0
        try:
            if probe.isolated:
                from ..isolated import definition_cells

                for index, defs_code, line_map in definition_cells(probe.cells or []):
                    probe.scratch_sources[defs_code.rstrip()] = (index, line_map)
                    defs = await self._execute(probe.kernel_id, defs_code, lambda e: None, timeout=300)
                    if defs.get("status") == "error":
                        probe.error = {"kind": "definitions", "cell": index, "message":
                                       f"re-running the definitions of cell {index + 1} in the scratch kernel "
                                       f"failed: {defs.get('ename')}: {defs.get('evalue')}"}
                        return
            content = await self._execute(probe.kernel_id, code, on_event,
                                          timeout=float(probe.spec.get("time_budget", 120)) * 2 + grace)
            err = self._import_error(content)
            if err and err["kind"] == "cancelled":
                probe.state = "cancelled"
            elif err and probe.error is None:
                probe.error = err
        except (TimeoutError, asyncio.TimeoutError):
            await self._interrupt(probe.kernel_id)
            probe.error = {"kind": "timeout", "message": "the probe ran past its time budget and was interrupted"}
        except Exception as exc:  # noqa: BLE001 - a probe must never take the server down
            probe.error = {"kind": "server", "message": f"{type(exc).__name__}: {exc}"}
            self.clients.pop(probe.kernel_id, None)
        finally:
            self._finish(probe)

    def _finish(self, probe: Probe) -> None:
        if probe.result is not None and probe.result.get("harness_error"):
            mapped = self._map_error(probe, probe.result["harness_error"])
            probe.result["harness_error"] = mapped
            if not probe.result.get("points") and probe.error is None:
                probe.error = mapped
        if probe.result is not None:
            if not probe.points:
                probe.points = list(probe.result.get("points", []))
            probe.result["verdict"] = self._verdict(probe.result)
            probe.findings = self._findings(probe)
        if probe.state == "running":
            probe.state = "error" if probe.error else "done"
        probe.finished = time.time()
        if self.running.get(probe.kernel_id) == probe.id:
            self.running.pop(probe.kernel_id, None)
        if probe.isolated:
            asyncio.ensure_future(self._shutdown_scratch(probe.kernel_id))

    async def _shutdown_scratch(self, kid: str) -> None:
        client = self.clients.pop(kid, None)
        if client is not None:
            client.stop_channels()
        try:
            await self.km.shutdown_kernel(kid, now=True)
        except Exception as exc:  # noqa: BLE001
            if self.log:
                self.log.warning("torchreview_lab: scratch kernel shutdown failed: %s", exc)

    def _map_error(self, probe: Probe, ev: Dict[str, Any]) -> Dict[str, Any]:
        out = {"kind": ev.get("kind", "harness"), "message": ev.get("message", "")}
        for fr in reversed(ev.get("frames") or []):
            cell, line = locate_in_cells(probe.cells, fr.get("cell_source"), fr.get("line"), probe.scratch_sources)
            if cell is not None:
                out.update(cell=cell, line=line, text=fr.get("text"))
                break
        else:
            if ev.get("frames"):
                fr = ev["frames"][-1]
                out.update(filename=fr.get("filename"), line=fr.get("line"), text=fr.get("text"))
        return out

    def _map_finding(self, probe: Probe, f: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(f)
        cell, line = locate_in_cells(probe.cells, d.pop("cell_source", None), d.get("line"), probe.scratch_sources)
        if cell is not None:
            d.update(cell=cell, line=line, path=probe.path or d.get("path"),
                     cell_id=(probe.cells[cell].get("id") if probe.cells else None))
            if d.get("end_line") is not None:
                d["end_line"] = d["end_line"] - f["line"] + line
        return d

    @staticmethod
    def _verdict(result: Dict[str, Any]) -> Optional[str]:
        """The result's one-sentence verdict (the panel shows it as the measuring engine words it)."""
        try:
            from ..measure.result import ScalingResult

            return ScalingResult.from_json({k: v for k, v in result.items()
                                            if k not in ("site", "harness_error", "verdict")}).verdict()
        except Exception:  # noqa: BLE001 - an older or partial result: the panel writes its own
            return None

    def _findings(self, probe: Probe) -> List[Dict[str, Any]]:
        try:
            from ..measure.result import ScalingResult
            from ..measure.rules import scaling_findings
        except ImportError:
            return []
        res = ScalingResult.from_json({k: v for k, v in probe.result.items()
                                       if k not in ("site", "harness_error", "verdict")})
        site = probe.result.get("site") or {}
        cell, line = locate_in_cells(probe.cells, site.get("cell_source"), site.get("line"), probe.scratch_sources)
        out = []
        for f in scaling_findings(res):
            d = f.to_json()
            d["path"] = probe.path or d["path"]
            d["line"] = line or site.get("line") or d["line"]
            d["cell"] = cell
            if cell is not None and probe.cells:
                d["cell_id"] = probe.cells[cell].get("id")
            out.append(d)
        return out

    def get(self, probe_id: str) -> Dict[str, Any]:
        if probe_id not in self.probes:
            raise NotFound(f"no probe with id {probe_id!r}")
        return self.probes[probe_id].to_json()

    async def _interrupt(self, kid: str) -> None:
        try:
            r = self.km.interrupt_kernel(kid)
            if asyncio.iscoroutine(r):
                await r
        except Exception as exc:  # noqa: BLE001
            if self.log:
                self.log.warning("torchreview_lab: interrupt failed: %s", exc)

    async def cancel(self, probe_id: str) -> Dict[str, Any]:
        if probe_id not in self.probes:
            raise NotFound(f"no probe with id {probe_id!r}")
        probe = self.probes[probe_id]
        if probe.state == "running":
            await self._interrupt(probe.kernel_id)
            if probe.task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(probe.task), timeout=15)
                except asyncio.TimeoutError:
                    pass
            if probe.state in ("running", "error") and probe.error and probe.error.get("kind") == "cancelled":
                probe.state, probe.error = "cancelled", None
        return probe.to_json()

    async def close(self) -> None:
        for c in self.clients.values():
            try:
                c.stop_channels()
            except Exception:  # noqa: BLE001
                pass
        self.clients.clear()
