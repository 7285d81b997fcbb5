from __future__ import annotations

from typing import List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._flow import const_int
from ._torch import assigned_values, dotted_name, enclosing_function
from .base import Invalid, Rule

# A duration table is recognised by its role in the name (durations/lengths of segments).
_DURATION_HINTS = ("dur", "length_score", "seg_len", "span_len")


def _convention(idx) -> Optional[str]:
    """``"k-1"`` for ``k - 1``; ``"clamp"`` for ``min(k, K - 1)``; None otherwise."""
    if isinstance(idx, cst.BinaryOperation) and isinstance(idx.operator, cst.Subtract) and const_int(idx.right) == 1 \
            and isinstance(idx.left, cst.Name):
        return "k-1"
    if isinstance(idx, cst.Call) and isinstance(idx.func, cst.Name) and idx.func.value == "min" and len(idx.args) == 2:
        a, b = idx.args[0].value, idx.args[1].value
        for x, y in ((a, b), (b, a)):
            if isinstance(x, cst.Name) and isinstance(y, cst.BinaryOperation) and isinstance(y.operator, cst.Subtract) \
                    and const_int(y.right) == 1:
                return "clamp"
    return None


class DurationConventionMixed(Rule):
    """Duration tables are indexed with two different conventions in one module.

    What it does:
        Collects every index into a duration table (a tensor whose name says it scores durations,
        or an index variable named for durations) and its convention: ``table[k - 1]`` (row k-1
        holds duration k, durations 1..K) or ``table[min(k, K - 1)]`` (row k holds duration k,
        capped at K-1). When a module mixes both, the minority sites are reported. Set
        ``duration_convention = "k-1"`` or ``"clamp"`` in the configuration to report every site
        that does not follow the chosen one.

    Why is this bad:
        The two conventions differ by one row for every duration below K: a model trained with
        one and decoded with the other scores every segment with its neighbour's duration. Nothing
        raises; results are just slightly wrong and hard to trace.

    Example:
        score = dur_table[k - 1]            # training path
        ...
        score = dur_table[min(k, K - 1)]    # decoding path

    Use instead:
        Pick one convention, write it down next to the table (``# dur_table: (K, C), row k-1 =
        duration k``) and use one helper for every lookup.
    """

    code = "TR902"
    title = "Duration-table indexing mixes k-1 and min(k, K-1)"
    category = "algorithm-correctness"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def a(dur_table, k):\n    return dur_table[k - 1]\ndef b(dur_table, k):\n    return dur_table[k - 1]\n",
        "def a(x, k):\n    return x[k - 1]\ndef b(x, k, K):\n    return x[min(k, K - 1)]\n",
    ]
    INVALID = [
        Invalid("def a(dur_table, k):\n    return dur_table[k - 1]\n"
                "def b(dur_table, j):\n    return dur_table[j - 1]\n"
                "def c(dur_table, k, K):\n    return dur_table[min(k, K - 1)]\n", line=6),
        Invalid("def a(durations, k, K):\n    return durations[:, min(k, K - 1)]\n"
                "def b(durations, k):\n    return durations[:, k - 1]\n", line=2),
        Invalid("def a(dur_table, k):\n    return dur_table[k - 1]\n"
                "def b(dur_table, k, K):\n    dur_idx = min(k, K - 1)\n    return dur_table[dur_idx]\n", line=5),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._sites: List[Tuple[str, cst.CSTNode]] = []

    def visit_Subscript(self, node: cst.Subscript) -> None:
        table = (dotted_name(node.value) or "").lower()
        for e in node.slice:
            if not isinstance(e.slice, cst.Index):
                continue
            idx = e.slice.value
            conv = _convention(idx)
            if conv is None and isinstance(idx, cst.Name):
                vals = assigned_values(self, enclosing_function(self, node), idx.value)
                conv = _convention(vals[0]) if len(vals) == 1 else None
            if conv is None:
                continue
            names = table + " " + " ".join(n.value.lower() for n in _names(idx))
            if any(h in names for h in _DURATION_HINTS):
                self._sites.append((conv, e.slice.value))

    def leave_Module(self, original_node: cst.Module) -> None:
        kinds = {c for c, _ in self._sites}
        wanted = self.ctx.options.get("duration_convention")
        if wanted not in ("k-1", "clamp"):
            if len(kinds) < 2:
                return
            counts = {k: sum(1 for c, _ in self._sites if c == k) for k in kinds}
            wanted = max([k for k in ("k-1", "clamp") if k in counts], key=lambda k: counts[k])  # ties: "k-1"
        other = {"k-1": "`table[k - 1]` (durations 1..K in rows 0..K-1)", "clamp": "`table[min(k, K - 1)]` (row k = duration k)"}
        for conv, node in self._sites:
            if conv == wanted:
                continue
            self.report(
                node,
                problem=(f"`{self.code_for(node)}` uses the {other[conv]} convention, while this module's other duration "
                         f"lookups use {other[wanted]}."),
                impact="The two conventions differ by one row: one path scores every segment with its neighbour's duration.",
                fix=Fix(before=self.code_for(node), after="# use one convention (and one helper) for every duration lookup"),
                evidence={"convention": conv, "majority": wanted},
            )


def _names(node):
    from ._torch import walk
    return [n for n in walk(node, cst.Name)]
