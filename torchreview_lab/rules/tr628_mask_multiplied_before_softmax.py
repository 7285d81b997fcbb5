from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import bound_values
from ._masks import drops_whole_rows, mask_like, zero_fill, zero_masking
from ._torch import (assigned_name, atom_code, dotted_name, enclosing_function, is_method_call, kwarg, last_part, method_call,
                     positional, source_text, torch_function, walk_own)
from .base import Invalid, Rule

_NORMALISERS = {"softmax", "log_softmax", "logsumexp", "nn.functional.softmax", "nn.functional.log_softmax",
                "special.softmax", "special.log_softmax", "special.logsumexp"}
_H = "import torch\nimport torch.nn.functional as F\n"


class MaskMultipliedBeforeSoftmax(Rule):
    """Padding masked by multiplication (or a 0 fill) before softmax.

    What it does:
        Follows the input of ``softmax``/``log_softmax``/``logsumexp`` (torch, ``F``, tensor methods,
        ``nn.Softmax`` modules) back through names, scaling, casts and in-place updates, and flags a
        score tensor that was masked by multiplying with a 0/1 mask (``scores * key_mask[:, None, None, :]``,
        ``scores * (ids != pad)``) or by filling 0 (``masked_fill(~mask, 0)``, ``torch.where(mask, s, 0)``)
        when no ``-inf``/``finfo.min``/``-1e9`` fill comes between them. A mask is a name containing
        ``mask`` or a comparison/boolean expression. Left alone: a mask that only drops whole rows
        (``mask[..., None]`` with softmax over the last axis), a softmax output masked again afterwards
        (and renormalised), multiplication by a scale or temperature.

    Why is this bad:
        Softmax turns a score of 0 into ``exp(0) = 1``, not into nothing: every padded key keeps about
        as much weight as an ordinary one. Outputs mix in padding and change with the padding length;
        nothing fails, the model just trains on it.

    Example:
        scores = (q @ k.transpose(-2, -1)) * key_mask[:, None, None, :]
        attn = scores.softmax(dim=-1)

    Use instead:
        scores = (q @ k.transpose(-2, -1)).masked_fill(key_mask[:, None, None, :] == 0,
                                                       torch.finfo(q.dtype).min)
        attn = scores.softmax(dim=-1)
    """

    code = "TR628"
    title = "Padding masked by multiplication (or a 0 fill) before softmax"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        _H + "def attend(q, k, key_mask):\n    s = q @ k.transpose(-2, -1)\n"
        "    s = s.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(s.dtype).min)\n    return s.softmax(-1)\n",
        _H + "def masked_softmax(vector, mask):\n    result = F.softmax(vector * mask, dim=-1)\n    result = result * mask\n"
        "    return result / (result.sum(dim=-1, keepdim=True) + 1e-13)\n",
        _H + "def f(scores, temperature):\n    return (scores * temperature).softmax(-1)\n",
        _H + "def f(logits, mask):\n    logits = logits * mask + (1.0 - mask) * -10000.0\n    return F.softmax(logits, dim=-1)\n",
        _H + "def token_nll(logits, mask):\n    return F.log_softmax(logits * mask.unsqueeze(-1), dim=-1)\n",
    ]
    INVALID = [
        Invalid(_H + "def attend(q, k, key_mask):\n    s = q @ k.transpose(-2, -1) / 8.0\n"
                "    s = s * key_mask[:, None, None, :]\n    return s.softmax(dim=-1)\n", line=5),
        Invalid(_H + "def pool(scores, attention_mask):\n    scores = scores.masked_fill(attention_mask == 0, 0.0)\n"
                "    return F.softmax(scores, dim=1)\n", line=4),
        Invalid(_H + "def f(logits, ids, pad):\n    w = torch.where(ids != pad, logits, 0)\n"
                "    return torch.logsumexp(w, dim=-1)\n", line=4),
        Invalid(_H + "def f(s, mask):\n    s *= mask.float()\n    return torch.softmax(s, -1)\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        fn, tf, pos = enclosing_function(self, node), torch_function(self, node), positional(node)
        if tf in _NORMALISERS and pos:
            x, dim = pos[0].value, kwarg(node, "dim") or (pos[1] if len(pos) > 1 else None)
        elif tf is None and is_method_call(self, node, {"softmax", "log_softmax", "logsumexp"}) and len(pos) <= 1 \
                and dotted_name(node.func.value) not in {"self", *self.ctx.names.aliases}:
            x, dim = method_call(node)[0], kwarg(node, "dim") or (pos[0] if pos else None)
        elif tf is None and len(node.args) == 1 and isinstance(node.func, (cst.Name, cst.Attribute)) \
                and "Softmax" in self.ctx.source:
            built = bound_values(self, fn, node.func, params_shadow=True)
            if not built or not all(isinstance(b, cst.Call) and (torch_function(self, b) or "").startswith("nn.")
                                    and last_part(torch_function(self, b)) in ("Softmax", "LogSoftmax") for b in built):
                return
            x, dim = node.args[0].value, kwarg(built[0], "dim") or (positional(built[0]) or [None])[0]
        else:
            return
        got = zero_masking(self, fn, x)
        if not isinstance(got, tuple) or drops_whole_rows(self, fn, got[2], dim.value if dim is not None else None):
            return
        if self._remasked(fn, node):
            return
        done = self.ctx.cache.setdefault(("tr628-done",), set())
        if id(got[0]) not in done:
            done.add(id(got[0]))
            self._report(got, node)

    def _remasked(self, fn, node) -> bool:
        """The softmax output is masked again (``p * mask``, ``p.masked_fill(~mask, 0)``) in the function."""
        target = assigned_name(self, node)
        parent = self.parent(node)
        if isinstance(parent, cst.BinaryOperation) and isinstance(parent.operator, cst.Multiply):
            return True
        for n in walk_own(fn.body if fn is not None else self.ctx.module, (cst.BinaryOperation, cst.Call)):
            if self.line_of(n) <= self.line_of(node):
                continue
            if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Multiply):
                sides = [s for s in (n.left, n.right) if isinstance(s, cst.Name) and s.value == target]
                if sides and mask_like(self, fn, n.right if sides[0] is n.left else n.left, sides[0]):
                    return True
            elif is_method_call(self, n, {"masked_fill", "masked_fill_", "mul", "mul_"}) \
                    and isinstance(method_call(n)[0], cst.Name) and method_call(n)[0].value == target:
                return True
        return False

    def _report(self, got, softmax) -> None:
        node, x, mask = got
        xs, ms = (self.code_for(e) if getattr(e, 'lpar', None) else atom_code(self, e) for e in (x, mask))
        fill = f"torch.finfo({xs}.dtype).min"
        zeros = [p.value for p in positional(node)[1:] if zero_fill(self, p.value)] if isinstance(node, cst.Call) \
            and (torch_function(self, node) == "where" or is_method_call(self, node, {"masked_fill", "masked_fill_"})) else []
        if zeros:
            how, after = f"fills 0 where `{self.code_for(mask)}` says so", source_text(self, node, [(zeros[-1], fill)])
        else:
            how, after = f"multiplies it by `{self.code_for(mask)}`", f"{xs}.masked_fill({ms} == 0, {fill})"
            after = f"{xs} = {after}" if isinstance(node, cst.AugAssign) else after
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` masks `{self.code_for(x)}`: it {how}, and "
                     f"`{self.code_for(softmax)}` ({self.where(softmax)}) then normalises it. A masked score of 0 "
                     f"becomes exp(0) = 1 in the softmax, not 0."),
            impact=("Padded or masked positions keep about as much weight as real ones: outputs mix in padding and "
                    "change with the padding length, and the model trains on it silently."),
            fix=Fix(before=self.code_for(node).strip(), after=after),
        )
