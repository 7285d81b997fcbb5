from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._flow import const_int
from ._torch import enclosing_function, kwarg, method_call, positional, torch_function, walk
from .base import Invalid, Rule


class GaussianKlOverBatch(Rule):
    """The VAE's Gaussian KL term is summed over the batch (dim 0) instead of over the latent dimensions.

    What it does:
        Recognises the closed-form KL of a diagonal Gaussian against N(0, I), ``-0.5 * (1 + logvar - mu**2 -
        logvar.exp())`` (in any order, with ``mu.pow(2)``, ``torch.exp(logvar)``, ``sigma**2`` and
        ``log(sigma**2)`` spellings), and flags a ``sum(..., dim=0)`` of it: with ``mu`` and ``logvar`` of
        shape (batch, latent), dim 0 is the batch. ``sum(dim=1)``/``sum(-1)`` followed by a batch mean, and a
        full ``sum()`` divided by the batch size, are the correct forms and are not flagged.

    Why is this bad:
        Summing over the batch and then averaging over the latents gives a KL weighted by B / D instead of
        1: the effective beta of the ELBO changes with the batch size and the latent size (posterior
        collapse at large batches, an unregularised latent at small ones), and the reported KL and ELBO are
        wrong. Nothing fails.

    Example:
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=0).mean()

    Use instead:
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
    """

    code = "TR626"
    title = "Gaussian KL summed over the batch dimension"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch\ndef kl(mu, logvar):\n    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()\n",
        "import torch\ndef kl(mu, logvar):\n    return -0.5 * torch.sum(1 + logvar - mu ** 2 - torch.exp(logvar)) / mu.size(0)\n",
        "import torch\ndef pooled(x):\n    return torch.sum(x, dim=0)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef kl(mu, logvar):\n    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=0).mean()\n",
                line=3, expected_fix="import torch\ndef kl(mu, logvar):\n"
                "    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()\n"),
        Invalid("def kl(mu, log_var):\n    terms = 1 + log_var - mu ** 2 - log_var.exp()\n    return (-0.5 * terms.sum(0)).mean()\n",
                line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf, mc = torch_function(self, node), method_call(node)
        if tf == "sum" and positional(node):
            src, rest = positional(node)[0].value, positional(node)[1:]
        elif tf is None and mc is not None and mc[1] == "sum":
            src, rest = mc[0], positional(node)
        else:
            return
        dim = kwarg(node, "dim") or (rest[0] if rest else None)
        if dim is None or const_int(dim.value) != 0 or not self._gaussian_kl(enclosing_function(self, node), src, node):
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` sums the Gaussian KL terms over dim 0, the batch of `mu`/`logvar` "
                     "(batch, latent), instead of over the latent dimensions."),
            impact=("The KL weight becomes batch/latent instead of 1: the ELBO's balance changes with the batch size "
                    "and latent size, and the reported KL and ELBO are wrong, without error."),
            fix=Fix(before=self.code_for(node), after=self.code_for(node).replace(self.code_for(dim), "dim=1")
                    if dim.keyword else self.code_for(node).replace(f"({self.code_for(dim.value)}", "(1")),
            replacement=node.with_changes(args=[a.with_changes(value=cst.Integer("1")) if a is dim else a
                                                for a in node.args]),
        )

    def _gaussian_kl(self, fn, expr, use, depth: int = 0) -> bool:
        """``1 + logvar - mu**2 - exp(logvar)``-shaped: an exp (or a square of sigma) and a square of
        another tensor, subtracted from a sum that contains ``1``."""
        if isinstance(expr, cst.Name) and depth < 2:
            v = reaching_value(self, fn, expr.value, use)
            return v is not None and self._gaussian_kl(fn, v, use, depth + 1)
        if not isinstance(expr, cst.BinaryOperation):
            return False
        code = self.code_for(expr).replace(" ", "")
        has_one = any(isinstance(n, cst.Integer) and n.value == "1" for n in walk(expr))
        exp = any((torch_function(self, c) or (method_call(c) or (None, ""))[1]).split(".")[-1] == "exp"
                  for c in walk(expr, cst.Call))
        square = ".pow(2)" in code or "**2" in code or _square_call(self, expr) is not None
        minus = sum(isinstance(b.operator, cst.Subtract) for b in walk(expr, cst.BinaryOperation)) >= 2
        return has_one and exp and square and minus and any(w in code.lower() for w in ("var", "sigma", "std"))


def _square_call(rule, expr) -> Optional[cst.Call]:
    return next((c for c in walk(expr, cst.Call) if torch_function(rule, c) == "square" or
                 (method_call(c) or (None, ""))[1] == "square"), None)
