from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._bindings import derived_names
from ._flow import canonical_size
from ._knowledge import SHAPE_FACTORIES
from ._pairs import band_names, filled_from_edge_list, pairwise_producer, position_difference
from ._torch import assigned_name, enclosing_function, names_in, shape_dims, torch_function, walk_own
from .base import Invalid, Rule


class DensePairsForSparseUse(Rule):
    """A dense (T x T) or (N x N) tensor is built where the code itself uses only a band or an edge list.

    What it does:
        Flags an all-pairs tensor (``q @ k.transpose(-2, -1)``, ``torch.cdist(x, x)``,
        ``s[:, :, None] + e[:, None, :]``) that the same function then restricts with a band mask over
        positions (``(i - j).abs() <= window``, ``width < max_width``), and a dense ``N x N`` matrix
        filled from the two rows of an edge list (``adj[edge_index[1], edge_index[0]] = 1``).

    Why is this bad:
        The code shows that only O(T * w) pairs (a band) or O(E) entries (a sparse graph) matter, yet it
        pays O(T^2) / O(N^2) memory and time: a float32 (T, T) matrix is 360 GB at T = 3e5, a dense
        adjacency of 1e6 nodes is 4 TB. Full attention over every key is different: there every pair is
        used, and this rule stays quiet.

    Example:
        scores = q @ k.transpose(-2, -1)
        band = (pos[:, None] - pos[None, :]).abs() <= window
        scores = scores.masked_fill(~band, float("-inf"))

    Use instead:
        Compute only the band: ``F.pad`` + ``unfold`` windows of keys (O(T * w)), a chunked/sliding-window
        kernel (flex_attention with a sliding-window block mask), or for graphs aggregate over the edge list
        with ``index_add_`` / ``scatter_reduce`` (or a ``torch.sparse`` matrix).
    """

    code = "TR106"
    title = "Dense pairwise tensor where only a band or an edge list is used"
    category = "memory-complexity"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef attend(q, k, v):\n    T = q.shape[-2]\n    s = q @ k.transpose(-2, -1)\n"
        "    keep = torch.triu(torch.ones(T, T, dtype=torch.bool))\n    s = s.masked_fill(~keep, float('-inf'))\n"
        "    return s.softmax(-1) @ v\n",
        "import torch\ndef local(x, win):\n    T = x.shape[1]\n    xp = torch.nn.functional.pad(x, (0, 0, win, win))\n"
        "    return xp.unfold(1, 2 * win + 1, 1).mean(-1)\n",
        "import torch\ndef confusion(pred, target, C):\n    cm = torch.zeros(C, C)\n    cm[target, pred] = 1\n    return cm\n",
        "import torch\ndef causal(q, k):\n    i = torch.arange(q.shape[1])\n    s = q @ k.transpose(1, 2)\n"
        "    return s.masked_fill((i[:, None] - i[None, :]) < 0, -1e4)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef local_attn(q, k, window):\n    T = q.shape[-2]\n    s = q @ k.transpose(-2, -1)\n"
                "    pos = torch.arange(T, device=q.device)\n    band = (pos[:, None] - pos[None, :]).abs() <= window\n"
                "    return s.masked_fill(~band, float('-inf')).softmax(-1)\n", line=4),
        Invalid("import torch\ndef spans(s, e, max_width):\n    T = s.shape[1]\n    scores = s[:, :, None] + e[:, None, :]\n"
                "    width = torch.arange(T)[None, :] - torch.arange(T)[:, None]\n"
                "    valid = (width >= 0) & (width < max_width)\n    return scores.masked_fill(~valid, -1e9)\n", line=4),
        Invalid("import torch\ndef contrast(x, win):\n    d = torch.cdist(x, x)\n    i = torch.arange(x.shape[1])\n"
                "    near = (i[None, :] - i[:, None]).abs() <= win\n    return (d * near).sum(-1)\n", line=3),
        Invalid("import torch\ndef propagate(x, edge_index):\n    N = x.shape[0]\n    adj = torch.zeros(N, N)\n"
                "    adj[edge_index[1], edge_index[0]] = 1.0\n    return adj @ x\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        what = pairwise_producer(self, node)
        if what:
            self._check_band(node, what)
        elif torch_function(self, node) in SHAPE_FACTORIES:
            self._check_adjacency(node)

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        what = pairwise_producer(self, node)
        if what:
            self._check_band(node, what)

    def _check_band(self, node, what: str) -> None:
        fn = enclosing_function(self, node)
        if fn is None:
            return
        band = band_names(self, fn)
        if not band or position_difference(self, fn, node):
            return  # the band mask itself (TR102 reports a pairwise mask at its own severity)
        stmt = next((a for a in self.ancestors(node) if isinstance(a, (cst.Assign, cst.Return, cst.Expr))), None)
        if stmt is None:
            return
        if isinstance(stmt, cst.Assign):
            mine = {t.target.value for t in stmt.targets if isinstance(t.target, cst.Name)}
            mine |= derived_names(fn.body, [node]) - band
            if not mine or not any(names_in(n) & mine and names_in(n) & band for n in walk_own(fn.body, (cst.Call, cst.BinaryOperation))):
                return
        elif not names_in(stmt) & band:
            return
        mask = sorted(band)[0]
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` materializes {what} over all position pairs, but the function keeps "
                     f"only a band of them (mask `{mask}`)."),
            impact=("O(T^2) memory and time for O(T * window) useful entries: at long sequences the (T, T) "
                    "intermediate runs out of memory although the band would fit."),
            fix=Fix(before=self.code_for(node),
                    after="# compute only the band: pad + unfold the keys into (.., T, window) windows, or chunk "
                          "over T with a halo of `window`"),
            evidence={"band_mask": mask},
        )

    def _check_adjacency(self, node: cst.Call) -> None:
        dims = shape_dims(self, node, torch_function(self, node))
        if not dims or len(dims) != 2:
            return
        fn = enclosing_function(self, node)
        name = assigned_name(self, node)
        if fn is None or name is None or canonical_size(self, fn, dims[0]) != canonical_size(self, fn, dims[1]):
            return
        if not filled_from_edge_list(self, fn, name):
            return
        self.report(
            node,
            problem=(f"`{name} = {self.code_for(node)}` is a dense N x N matrix filled from an edge list: memory "
                     f"O(N^2) for O(E) edges, and `{name} @ x` costs O(N^2 * d)."),
            impact="A sparse graph of 1e6 nodes needs a 4 TB float32 matrix; message passing over E edges needs O(E).",
            fix=Fix(before=self.code_for(node),
                    after="out = torch.zeros_like(x).index_add_(0, dst, x[src])  # aggregate over the edges"),
        )
