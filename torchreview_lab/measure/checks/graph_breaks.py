"""TR014 graph breaks under ``torch.compile``.

``torch._dynamo.explain(fn)(...)`` traces with its own recording backend (no C compiler needed) and
lists break reasons with the user's stack; with several breaks in one function it under-reports, so
``torch._dynamo.utils.counters["graph_break"]`` is read too and the union reported. Dynamo is reset
afterwards and the global counters restored.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Dict, List, Tuple

from ...findings import Fix
from .._frames import _skipped
from ..rules import make_finding
from ._base import CheckContext


def check_graph_breaks(ctx: CheckContext) -> list:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    saved = collections.Counter(counters["graph_break"])
    dyn_log = logging.getLogger("torch._dynamo")
    level = dyn_log.level
    dyn_log.setLevel(logging.ERROR)  # explain() logs every break as a warning; we report them instead
    counters["graph_break"].clear()
    breaks: List[Tuple[str, Any]] = []
    try:
        dynamo.reset()
        if ctx.make_inputs is None:
            from .._harness import accepts_device

            if accepts_device(ctx.fn):
                explained = dynamo.explain(ctx.fn)(ctx.size, device=ctx.device)
            else:
                explained = dynamo.explain(ctx.fn)(ctx.size)
        else:
            args, kwargs = ctx.inputs(ctx.device)
            explained = dynamo.explain(ctx.fn)(*args, **kwargs)
        for br in getattr(explained, "break_reasons", []) or []:
            site = None
            for fs in reversed(list(getattr(br, "user_stack", []) or [])):
                if not _skipped(fs.filename):
                    site = (fs.filename, fs.lineno, fs.name)
                    break
            breaks.append((_reason(br.reason), site))
        extra = dict(counters["graph_break"])
    except Exception as e:  # dynamo cannot trace this at all: say so, do not fail the review
        ctx.notes.append(f"TR014 graph-break check could not run: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
        return []
    finally:
        dyn_log.setLevel(level)
        dynamo.reset()
        counters["graph_break"].clear()
        counters["graph_break"].update(saved)
    known = {r for r, _ in breaks}
    for reason in extra:
        if not any(reason[:60] in k or k[:60] in reason for k in known):
            breaks.append((_reason(reason), None))
    setup = [(r, s) for r, s in breaks if _is_setup(r)]
    breaks = [(r, s) for r, s in breaks if not _is_setup(r)]
    if setup:
        ctx.notes.append(f"TR014: {len(setup)} break(s) come from building inputs or modules inside the traced "
                         "harness (requires_grad factories, nn.Parameter, module construction); pass make_inputs "
                         "to trace the computation alone")
    by_key: Dict[Any, List[str]] = {}
    placed = set()
    for reason, site in breaks:
        if reason in placed:  # dynamo repeats a break from the resume function: keep its first site
            continue
        placed.add(reason)
        key = site or ("reason", reason)
        by_key.setdefault(key, [])
        if reason not in by_key[key]:
            by_key[key].append(reason)
    findings = []
    for key, reasons in by_key.items():
        site = key if key[0] != "reason" else ctx.location()
        findings.append(make_finding(
            "TR014", "torch.compile graph break: " + reasons[0][:90], site,
            problem="dynamo cannot trace this line into the compiled graph: " + "; ".join(reasons[:3]),
            impact="the compiled function is split into several graphs with Python in between: fewer fusions, "
                   "extra launches, and the recompilation risk grows",
            fix=Fix(before="if x.sum() > 0:  # data-dependent Python", after="x = torch.where(x.sum() > 0, a, b)"),
            evidence={"reasons": reasons, "located": key[0] != "reason"}))
    return findings


_SETUP_MARKERS = ("requires_grad=True", "nn.Parameter()", "Uninitialized nn.Module")


def _is_setup(reason: str) -> bool:
    """Breaks caused by constructing inputs/models inside the harness, not by the computation."""
    return any(m in reason for m in _SETUP_MARKERS)


def _reason(text: Any) -> str:
    s = str(text).strip()
    return " ".join(s.split())[:400]
