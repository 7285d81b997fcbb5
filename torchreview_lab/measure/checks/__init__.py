"""Runtime checks: run the user's code once (or a few times) under modes and report Findings.

``check(fn, size=64)`` runs every check and returns a :class:`CheckResult` (a list of Findings with
``notes`` about what was skipped). Each check has one rule code (see :mod:`..rules`)::

    TR010 device     TR011 syncs      TR012 grads      TR013 nonfinite
    TR014 graph_breaks                TR015 leaks      TR016 gradcheck

Conventions (see ``docs/measure.md``): a harness ``fn(T)`` or ``fn(T, device=...)`` builds its inputs
and returns the loss (or the output; its sum is used as the loss); or pass ``make_inputs(T)`` and
``fn(*inputs)`` is run. Each check is isolated: its own failure becomes a note, never an exception,
and the random-number state is restored after every check.
"""
from __future__ import annotations

import contextlib
import gc
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from ...findings import Finding
from ..probe import is_oom, resolve_device
from .._preserve import UserState
from ._base import CheckContext
from .device import check_devices
from .grads import check_grads
from .gradcheck import check_gradcheck
from .graph_breaks import check_graph_breaks
from .leaks import check_leaks
from .nonfinite import check_nonfinite
from .syncs import check_syncs

CHECKS: Dict[str, Callable[[CheckContext], list]] = {
    "device": check_devices,
    "syncs": check_syncs,
    "grads": check_grads,
    "nonfinite": check_nonfinite,
    "graph_breaks": check_graph_breaks,
    "leaks": check_leaks,
    "gradcheck": check_gradcheck,
}
CODES = {"device": "TR010", "syncs": "TR011", "grads": "TR012", "nonfinite": "TR013",
         "graph_breaks": "TR014", "leaks": "TR015", "gradcheck": "TR016"}


class CheckResult(list):
    """A list of Findings, plus ``notes`` (checks skipped or stopped, and why) and ``seconds``."""

    def __init__(self, findings: Iterable[Finding] = (), notes: Optional[List[str]] = None,
                 seconds: Optional[Dict[str, float]] = None, function: str = "") -> None:
        super().__init__(sorted(findings, key=lambda f: f.sort_key()))
        self.notes = list(notes or [])
        self.seconds = dict(seconds or {})
        self.function = function

    def to_json(self) -> Dict[str, Any]:
        from ...findings import summarize

        return {"function": self.function, "findings": [f.to_json() for f in self],
                "summary": summarize(list(self)), "notes": list(self.notes),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "CheckResult":
        return cls([Finding.from_json(f) for f in data.get("findings", [])], data.get("notes"),
                   data.get("seconds"), data.get("function", ""))

    def __str__(self) -> str:
        head = f"Runtime checks of {self.function}: " if self.function else "Runtime checks: "
        lines = [head + (f"{len(self)} finding(s)" if self else "no findings")]
        for f in self:
            lines.append(f"{f.location()}: {f.rule} [{f.severity}] {f.title}")
            if f.problem:
                lines.append(f"    {f.problem}")
            if f.fix is not None:
                lines.append(f"    fix: {f.fix.before}  ->  {f.fix.after}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CheckResult({len(self)} findings, {len(self.notes)} notes)"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self) if not cycle else "CheckResult(...)")

    def _repr_html_(self) -> str:
        """A table of the findings (severity, code, title and message, the user's file:line, evidence),
        the notes (checks skipped or stopped) and the seconds per check. All text is escaped."""
        from .._html import MUTED, SEVERITY_COLORS, box, esc, evidence_summary, marked, table, td

        counts = {}
        for f in self:
            counts[f.severity] = counts.get(f.severity, 0) + 1
        what = (f"{len(self)} finding{'s' if len(self) != 1 else ''} ("
                + ", ".join(f"{n} {sev}" for sev, n in counts.items()) + ")") if self else "no findings"
        head = (f"<b>Runtime checks{' of <code>' + esc(self.function) + '</code>' if self.function else ''}</b>: "
                f"{esc(what)}")
        if self.seconds:
            head += f" <span style='{MUTED}'>· {len(self.seconds)} checks in {sum(self.seconds.values()):.2f} s</span>"
        parts = [f"<div style='margin:2px 0 4px'>{head}</div>"]
        if self:
            rows = []
            for f in self:
                msg = f"<div>{esc(f.title)}</div>"
                if f.problem:
                    msg += f"<div style='{MUTED}'>{esc(f.problem)}</div>"
                if f.fix is not None:
                    msg += (f"<div style='{MUTED}'>fix: <code>{esc(f.fix.before)}</code> → "
                            f"<code>{esc(f.fix.after)}</code></div>")
                rows.append("<tr>" + marked(f.severity, SEVERITY_COLORS.get(f.severity, "#78909c"))
                            + td(f"<code>{esc(f.rule)}</code>") + td(msg)
                            + td(f"<code>{esc(f.location())}</code>")
                            + td(f"<span style='{MUTED}'>{esc(evidence_summary(f.evidence))}</span>") + "</tr>")
            parts.append(table(["severity", "code", "finding", "where", "evidence"], rows))
        if self.notes:
            parts.append(f"<div style='margin-top:4px'>notes:</div><ul style='margin:2px 0'>"
                         + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")
        if self.seconds:
            parts.append(f"<div style='{MUTED}'>seconds: "
                         + " · ".join(f"{esc(k)} {v:.2f}" for k, v in self.seconds.items()) + "</div>")
        return box("".join(parts))

def check(fn: Callable, size: Any = 64, *, checks: Optional[Iterable[str]] = None,
          make_inputs: Optional[Callable] = None, device: str = "auto") -> CheckResult:
    """Run the runtime checks on ``fn`` at ``size`` and return the findings (a :class:`CheckResult`).

    ``checks`` selects by name (``device, syncs, grads, nonfinite, graph_breaks, leaks, gradcheck``)
    or rule code (``TR010``…); default all.
    """
    from .._harness import frozen_heap, harness_name

    dev = resolve_device(device)
    wanted = _select(checks)
    ctx = CheckContext(fn=fn, size=size, make_inputs=make_inputs, device=dev)
    findings: List[Finding] = []
    seconds: Dict[str, float] = {}
    # the leak check collects after every call: keep those collections cheap; the user's model,
    # optimizer and leaf tensors get their gradients, modes, buffers and state back afterwards
    with frozen_heap(), UserState(fn, make_inputs) as state:
        _run_checks(wanted, ctx, findings, seconds, state)
    ctx.notes.extend(state.changed)
    return CheckResult(findings, ctx.notes, seconds, harness_name(fn))


def _rng_devices(device: str) -> list:
    """The CUDA devices whose random state a check must save and restore: the checked GPU only (no
    CUDA context is started for checks on the CPU of a GPU machine)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


def _run_checks(wanted, ctx, findings, seconds, state: UserState) -> None:
    rng_devices = _rng_devices(ctx.device)
    for name in wanted:
        t0 = time.perf_counter()
        state.clear()  # each check starts from a clean step: no gradients left by the one before
        # modules the runs call are discovered by a global forward hook, except under dynamo (which
        # would trace the hook)
        watch = state.watching() if name != "graph_breaks" else contextlib.nullcontext()
        with torch.random.fork_rng(devices=rng_devices), watch:
            torch.manual_seed(0)
            try:
                findings.extend(CHECKS[name](ctx))
            except Exception as e:  # one check failing must not stop the others
                kind = "ran out of memory" if is_oom(e) else "failed"
                ctx.notes.append(f"{CODES[name]} {name} check {kind}: {type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
            finally:
                gc.collect()
        seconds[name] = time.perf_counter() - t0


def _select(checks: Optional[Iterable[str]]) -> List[str]:
    if checks is None:
        return list(CHECKS)
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    by_code = {v: k for k, v in CODES.items()}
    out = []
    for c in checks:
        name = by_code.get(str(c).upper(), str(c).replace("-", "_"))
        if name not in CHECKS:
            raise ValueError(f"unknown check {c!r}; choose from {', '.join(CHECKS)} or {', '.join(CODES.values())}")
        out.append(name)
    return out


__all__ = ["check", "CheckResult", "CheckContext", "CHECKS", "CODES"]
