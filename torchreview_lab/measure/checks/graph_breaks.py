"""TR014 graph breaks under ``torch.compile``.

The harness is traced by dynamo with a recording backend (no C compiler needed), as
``torch._dynamo.explain`` does, which lists break reasons with the user's stack; with several breaks in
one function that under-reports, so ``torch._dynamo.utils.counters["graph_break"]`` is read too and the
union reported.

``explain`` itself calls ``torch._dynamo.reset()`` before and after, which throws away every compiled
function of the user's session (their next call recompiles, minutes for a large model). So the trace
runs in an isolated recompile region (``isolate_recompiles=True``: its cache entries are kept apart from
the user's, and a fresh region per check forces a fresh trace), and afterwards only the code objects
this trace compiled first are cleared (``reset_code``); the user's own compiled entries stay, and so do
dynamo's counters. On a torch without isolated regions, ``explain`` is used and a note says the
compile caches were reset.
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

    saved = {k: collections.Counter(v) for k, v in counters.items()}
    dyn_log = logging.getLogger("torch._dynamo")
    level = dyn_log.level
    dyn_log.setLevel(logging.ERROR)  # dynamo logs every break as a warning; we report them instead
    counters["graph_break"].clear()
    breaks: List[Tuple[str, Any]] = []
    try:
        if ctx.make_inputs is None:
            from .._harness import accepts_device

            args, kwargs = (ctx.size,), ({"device": ctx.device} if accepts_device(ctx.fn) else {})
        else:
            args, kwargs = ctx.inputs(ctx.device)
        reasons = _trace(ctx, dynamo, args, kwargs)
        for br in reasons:
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
        counters.clear()
        counters.update(saved)
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


def _trace(ctx: CheckContext, dynamo: Any, args: tuple, kwargs: dict) -> list:
    """Run the harness once under dynamo with a recording backend; the graphs' break reasons."""
    from unittest import mock

    from torch._C._dynamo.eval_frame import reset_code
    from torch._dynamo import convert_frame

    def live_codes() -> dict:
        seen = list(convert_frame.input_codes.seen) + list(convert_frame.output_codes.seen)
        return {id(c): c for c in (w() for w in seen) if c is not None}

    reasons: list = []

    def record(gm: Any, example_inputs: Any) -> Any:
        why = getattr(gm, "compile_subgraph_reason", None)
        if why is not None and why.graph_break:
            reasons.append(why)
        return gm.forward

    before = live_codes()
    try:
        traced = dynamo.optimize(record, nopython=False, isolate_recompiles=True)(ctx.fn)
    except TypeError:  # torch without isolated recompile regions: explain(), which resets dynamo
        ctx.notes.append("TR014: this torch has no isolated compile regions; the check reset torch.compile's "
                         "caches (compiled functions recompile on their next call)")
        try:
            return list(dynamo.explain(ctx.fn)(*args, **kwargs).break_reasons or [])
        finally:
            dynamo.reset()
    try:
        with mock.patch("torch._dynamo.symbolic_convert.explain", True):
            traced(*args, **kwargs)
    finally:
        for key, code in live_codes().items():
            if key not in before:  # compiled first by this trace (resume functions, transformed code)
                reset_code(code)
    return reasons


_SETUP_MARKERS = ("requires_grad=True", "nn.Parameter()", "Uninitialized nn.Module")


def _is_setup(reason: str) -> bool:
    """Breaks caused by constructing inputs/models inside the harness, not by the computation."""
    return any(m in reason for m in _SETUP_MARKERS)


def _reason(text: Any) -> str:
    s = str(text).strip()
    return " ".join(s.split())[:400]
