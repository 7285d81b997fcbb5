from __future__ import annotations

from typing import Set

import libcst as cst

from ..findings import Fix
from ._context import under_test_of
from ._flow import attribute_dim_sizes, canonical_size, doc_shapes, upper_bounds
from ._loops import loop_derived
from ._pairs import count_index, count_top, dim_size_doc, plus_one_axis
from ._torch import assigned_values, enclosing_function, function_facts, names_in, source_names
from .base import Invalid, Rule


class IndexReachesSize(Rule):
    """A loop-derived index can reach N on a dimension of size N (off by one).

    What it does:
        Works out symbolic upper bounds of index expressions (``range(K)`` gives ``k <= K-1``,
        ``range(1, K + 1)`` gives ``k <= K``, ``k + 1`` adds one, ``min(k, K - 1)`` caps it) and the
        size of the indexed dimension (``N = t.shape[0]``, ``a, b = t.shape``, ``t.size(0)``,
        ``len(t)``, or a documented shape such as ``# table: (K, C)`` or a docstring line
        ``x: (batch, T, C)``). Reports an index whose bound reaches the size, and a length or a
        documented 1..N value (``lengths``, ``seg_len: (N,) in 1..K``) passed as it is to ``gather``,
        ``index_select`` or ``x[arange(B), lengths]`` on an axis of that size.

    Why is this bad:
        Valid indices of a dimension of size N are 0..N-1. An index that reaches N raises
        ``IndexError`` on the last iteration (on CUDA: a device-side assert that kills the
        process), or, with a convention mix-up one step earlier, silently reads the neighbouring
        entry (durations shifted by one).

    Example:
        # dur_table: (K, C) scores for durations 1..K
        for k in range(K):
            dur = k + 1
            out.append(dur_table[dur])

    Use instead:
        for k in range(K):
            out.append(dur_table[k])        # row k holds duration k + 1
    """

    code = "TR601"
    title = "Index can reach the size of the dimension (off by one)"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nclass CRF(torch.nn.Module):\n    def __init__(self, C, max_duration):\n"
        "        super().__init__()\n        self.K = max_duration\n"
        "        self.duration = torch.nn.Parameter(torch.randn(max_duration + 1, C))\n"
        "    def forward(self, x):\n        return [x + self.duration[k] for k in range(1, self.K + 1)]\n",
        "def f(dur_table, K):\n    # dur_table: (K, C)\n    out = []\n    for k in range(K):\n        out.append(dur_table[k])\n    return out\n",
        "def f(dur_table, K):\n    # dur_table: (K, C)\n    out = []\n    for k in range(1, K + 1):\n        i = min(k, K - 1)\n        out.append(dur_table[i])\n    return out\n",
        "def f(x):\n    N = x.shape[0]\n    for i in range(N - 1):\n        x[i + 1] = x[i]\n    return x\n",
        "def f(x):\n    n = len(x)\n    for i in range(n):\n        if i + 1 < n:\n            x[i + 1] += x[i]\n",
        "def f(x, K):\n    T = x.shape[1]\n    for t in range(T):\n        y = x[:, t]\n    return y\n",
        "import torch\ndef last(h, lengths):\n    return h[torch.arange(h.shape[0]), lengths - 1]\n",
        "import torch.nn.functional as F\ndef ends(x, lengths):\n    p = F.pad(x.cumsum(1), (0, 0, 1, 0))\n    return p.gather(1, lengths[:, None, None].expand(-1, 1, x.shape[-1]))\n",
        "import torch.nn.functional as F\ndef f(x):\n    T = x.shape[0]\n    x = F.pad(x, (0, 0, 1, 0))\n    for t in range(T):\n        y = x[t + 1] - x[t]\n    return y\n",
    ]
    INVALID = [
        Invalid("def last(h, lengths):\n    return h.gather(1, lengths.view(-1, 1, 1).expand(-1, 1, h.shape[-1]))\n", line=2),
        Invalid("def bonus(table, d):\n    \"\"\"table: (K, C); d: (N,) in 1..K\"\"\"\n    return table.index_select(0, d)\n", line=3),
        Invalid("def f(dur_table, K):\n    # dur_table: (K, C) scores for durations 1..K\n    out = []\n    for k in range(K):\n        dur = k + 1\n        out.append(dur_table[dur])\n    return out\n", line=6),
        Invalid("def f(x):\n    B, T, C = x.shape\n    acc = x[:, 0]\n    for t in range(1, T + 1):\n        acc = acc + x[:, t]\n    return acc\n", line=5),
        Invalid("def f(x):\n    \"\"\"Scores.\n\n    Args:\n        x: (batch, T, C) emissions\n    \"\"\"\n    T = x.size(1)\n    for t in range(T):\n        d = x[:, t + 1] - x[:, t]\n    return d\n", line=9),
        Invalid("def f(seq):\n    for i in range(len(seq)):\n        print(seq[i + 1])\n", line=3),
        Invalid("import torch\nclass CRF(torch.nn.Module):\n    def __init__(self, C, max_duration):\n"
                "        super().__init__()\n        self.K = max_duration\n"
                "        self.duration = torch.nn.Parameter(torch.randn(max_duration, C))\n"
                "    def forward(self, x):\n        out = []\n        for k in range(1, self.K + 1):\n"
                "            out.append(x + self.duration[k])\n        return out\n", line=10),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        self._count_as_index(node)

    def _count_as_index(self, node) -> bool:
        """``out.gather(1, lengths[..])`` / ``table.index_select(0, seg_len)`` with values 1..N on a size-N axis."""
        site, fn = count_index(self, node), enclosing_function(self, node)
        top = count_top(self, fn, site[2]) if site and fn is not None else None
        if top is None or not isinstance(site[0], (cst.Name, cst.Attribute)):
            return False
        (arr, dim, name), doc = site, dim_size_doc(self, fn, self.code_for(site[0]), site[1])
        if top:  # documented 1..N: the axis must have size N
            sizes = self._sizes(fn, arr, dim) | ({doc, canonical_size(self, fn, cst.Name(doc))} if doc else set())
            if not sizes & {top, canonical_size(self, fn, cst.Name(top))}:
                return False
        elif dim == 0 or (doc and not doc.isidentifier()) or any(
                k in self.code_for(v) for v in assigned_values(self, fn, getattr(arr, "value", "")) for k in ("pad(", "cat(")) \
                or plus_one_axis(self, fn, arr, dim):
            return False  # a padded (T + 1)-row table takes lengths as they are
        self.report(node, problem=(f"`{name}` holds counts/positions 1..{top or 'T'} (a length, not a 0-based index), "
                                   f"but indexes dimension {dim} of `{self.code_for(arr)}` as it is: it reaches the size."),
                    impact=("The full-length row raises an out-of-range error (a device-side assert on CUDA); every other row "
                            "silently reads the entry after the intended one (the first padding position)."),
                    fix=Fix(before=self.code_for(node), after=f"# index with `{name} - 1` (the last valid position)"))
        return True

    def visit_Subscript(self, node: cst.Subscript) -> None:
        if not isinstance(node.value, (cst.Name, cst.Attribute)) or self._count_as_index(node):
            return
        fn = enclosing_function(self, node)
        for dim, elem in self._dims(node):
            idx = elem.slice.value
            if isinstance(idx, (cst.Integer, cst.UnaryOperation)):
                continue
            sizes = self._sizes(fn, node.value, dim)
            if not sizes:
                continue
            bounds = upper_bounds(self, fn, node, idx)
            if not bounds or not all(s in sizes and off >= 0 for s, off in bounds):
                continue
            guard_names = names_in(idx) | source_names(self, fn, idx)  # the index's names, one assignment back
            if under_test_of(self, node, guard_names) or not loop_derived(self, node, idx, fn):
                continue
            worst, size_txt, arr = max(off for _, off in bounds), sorted(sizes, key=len)[0], self.code_for(node.value)
            self.report(
                elem, problem=(f"Index `{self.code_for(idx)}` into dimension {dim} of `{arr}` can reach "
                         f"`{size_txt}{' + ' + str(worst) if worst else ''}`, but that dimension has size `{size_txt}` "
                         f"(valid indices 0..{size_txt} - 1)."),
                impact=("The last iteration raises IndexError (on CUDA a device-side assert), or with a shifted "
                        "convention every lookup silently reads the neighbouring entry."),
                fix=Fix(before=self.code_for(node),
                        after=f"{arr}[{self.code_for(idx)} - 1]  # or shrink the loop range by one"),
                evidence={"bound": [f"{s} + {o}" for s, o in bounds], "size": sorted(sizes)},
            )

    def _dims(self, node: cst.Subscript):
        for i, e in enumerate(node.slice):
            if isinstance(e.slice, cst.Index):
                v = e.slice.value
                if isinstance(v, cst.Ellipsis) or (isinstance(v, cst.Name) and v.value == "None"):
                    return
                yield i, e

    def _sizes(self, fn, arr, dim: int) -> Set[str]:
        arr_code = self.code_for(arr)
        docs = doc_shapes(self, fn)
        n_assign = reassigned = len(assigned_values(self, fn, arr.value)) if isinstance(arr, cst.Name) else 0
        if n_assign >= 2 or (n_assign and fn is not None and isinstance(arr, cst.Name) and arr.value in function_facts(self, fn).params):
            return set()  # x = F.pad(x, ...): sizes read before and after differ
        out: Set[str] = {f"{arr_code}.shape[{dim}]"} | attribute_dim_sizes(self, arr, dim)
        if arr_code in docs and not reassigned:
            dims = docs[arr_code]
            if dim < len(dims) and dims[dim] != "?" and not dims[dim].isdigit():
                out |= {canonical_size(self, fn, cst.Name(dims[dim])), dims[dim]}
        return out
