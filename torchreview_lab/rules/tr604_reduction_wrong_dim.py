from __future__ import annotations

import re
from typing import Dict, List, Optional

import libcst as cst

from ..findings import Fix
from ._flow import comment_and_doc_text, const_int, documented_shapes
from ._torch import enclosing_function, kwarg, method_call, positional, torch_function
from .base import Invalid, Rule

# Concepts a dimension can stand for: the words that name it in shapes, and in comments/names.
_CONCEPTS = {
    "time": ({"t", "time", "seq", "seq_len", "seqlen", "len", "length", "steps", "n_steps", "l"},
             r"\b(time|timesteps?|sequence|seq|positions?|steps?|frames?|tokens?)\b|_(time|seq|steps?)\b"),
    "batch": ({"b", "batch", "bsz", "batch_size", "n_batch"}, r"\b(batch|examples?|samples?)\b|_batch\b"),
    "class": ({"c", "classes", "labels", "n_classes", "num_classes", "k_labels", "v", "vocab"},
              r"\b(class(es)?|labels?|vocab(ulary)?|categories)\b|_(class(es)?|labels?)\b"),
    "feature": ({"d", "h", "hidden", "dim", "features", "d_model", "emb", "channels"},
                r"\b(features?|hidden|channels?|embedding)\b|_(features?|hidden)\b"),
}
_REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "logsumexp", "softmax", "log_softmax", "argmax", "prod",
               "cumsum", "std", "var", "norm"}


def _concept_of_dim(name: str) -> Optional[str]:
    for concept, (names, _) in _CONCEPTS.items():
        if name.lower() in names:
            return concept
    return None


def _concept_of_text(text: str) -> Optional[str]:
    found = [c for c, (_, pat) in _CONCEPTS.items() if re.search(pat, text, re.I)]
    return found[0] if len(found) == 1 else None


class ReductionWrongDim(Rule):
    """A reduction runs over a different dimension than the one its comment or name says.

    What it does:
        Uses documented shapes (``# x: (batch, T, C)`` or a docstring ``x: (batch, T, C)``) to name
        the dimension a reduction with a constant ``dim`` works on, and compares it with what the
        line says it does (a trailing comment such as ``# sum over time`` or a result name such as
        ``per_step_total``). Reports when they disagree.

    Why is this bad:
        A reduction over the wrong axis still returns a tensor of a plausible shape when the sizes
        happen to broadcast (batch 1 in tests, T == C), so the bug survives tests and produces
        wrong numbers on real batches.

    Example:
        # x: (batch, T, C)
        total = x.sum(0)   # sum over time

    Use instead:
        total = x.sum(1)   # dim 1 is T
    """

    code = "TR604"
    title = "Reduction over a different dimension than documented"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def f(x):\n    # x: (batch, T, C)\n    total = x.sum(1)  # sum over time\n    return total\n",
        "def f(x):\n    # x: (batch, T, C)\n    return x.sum(0)\n",
    ]
    INVALID = [
        Invalid("def f(x):\n    # x: (batch, T, C)\n    total = x.sum(0)  # sum over time\n    return total\n", line=3),
        Invalid("import torch\ndef f(logits):\n    \"\"\"logits: (batch, T, C) scores\"\"\"\n    probs_over_classes = torch.softmax(logits, dim=1)\n    return probs_over_classes\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        mc = method_call(node)
        if tf in _REDUCTIONS and positional(node):
            src, dim_arg = positional(node)[0].value, (positional(node)[1].value if len(positional(node)) > 1 else None)
        elif tf is None and mc and mc[1] in _REDUCTIONS:
            src, dim_arg = mc[0], (positional(node)[0].value if positional(node) else None)
        else:
            return
        if kwarg(node, "dim") is not None:
            dim_arg = kwarg(node, "dim").value
        if not isinstance(src, cst.Name) or dim_arg is None:
            return
        d = const_int(dim_arg)
        fn = enclosing_function(self, node)
        dims = self._shapes(fn).get(src.value)
        if d is None or not dims or not -len(dims) <= d < len(dims):
            return
        actual = _concept_of_dim(dims[d])
        said = _concept_of_text(self._intent(node))
        if actual is None or said is None or actual == said:
            return
        want = [i for i, n in enumerate(dims) if _concept_of_dim(n) == said]
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` reduces dim {d} of `{src.value}`, documented as ({', '.join(dims)}): "
                     f"that is `{dims[d]}` ({actual}), but the line says it works over {said}."),
            impact="The result has a plausible shape but the wrong values; tests with batch 1 or T == C do not notice.",
            fix=Fix(before=self.code_for(node),
                    after=self.code_for(node).replace(self.code_for(dim_arg), str(want[0])) if want else self.code_for(node)),
        )

    def _intent(self, node) -> str:
        text = []
        for a in self.ancestors(node):
            if isinstance(a, cst.Assign):
                text += [self.code_for(t.target) for t in a.targets]
            if isinstance(a, cst.SimpleStatementLine):
                c = a.trailing_whitespace.comment
                if c is not None:
                    text.append(c.value)
                break
        return " ".join(text).replace("_", " _").replace("over", " over")

    def _shapes(self, fn) -> Dict[str, List[str]]:
        key = ("doc-shapes", id(fn))
        if key not in self.ctx.cache:
            n = fn if fn is not None else self.ctx.module
            self.ctx.cache[key] = documented_shapes(comment_and_doc_text(self, n)) if n is not None else {}
        return self.ctx.cache[key]
