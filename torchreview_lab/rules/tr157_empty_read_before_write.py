from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import is_method_call, kwarg, method_call, names_in, positional, source_text, torch_function, walk
from .base import Invalid, Rule

_EMPTY = {"empty": "zeros", "empty_like": "zeros_like", "empty_strided": None, "new_empty": "new_zeros"}
_READS = frozenset("add_ sub_ mul_ div_ addcmul_ addcdiv_ lerp_ pow_ clamp_ exp_ log_ neg_ abs_ sqrt_ sigmoid_ tanh_ relu_ "
                   "index_add_ scatter_add_ sum mean max min prod cumsum norm item tolist std var argmax argmin amax amin any all exp "
                   "log abs sqrt softmax log_softmax logsumexp clamp add sub mul div matmul mm bmm pow sigmoid tanh relu where einsum".split())
_META = frozenset("shape size dtype device ndim dim numel nelement is_cuda stride element_size layout requires_grad get_device "
                  "is_contiguous storage_offset requires_grad_ zeros_like ones_like empty_like full_like rand_like randn_like".split())
_VIEWS = frozenset("view reshape t transpose permute narrow select unsqueeze squeeze flatten view_as unflatten diagonal expand "
                   "contiguous to cuda cpu float double half bfloat16 detach clone data T mT real imag pin_memory numpy".split())


class EmptyReadBeforeWrite(Rule):
    """``torch.empty`` memory read (accumulated into, reduced, combined) before anything writes it.

    What it does:
        Follows a name bound to ``torch.empty``/``empty_like``/``empty_strided``/``x.new_empty`` to the end of its block,
        into branches and loops, and flags it when the first use on some path reads the values (``acc += x``, ``acc[i] += v``,
        ``acc.add_(v)``, ``acc.sum()``, ``h[t] = h[t - 1] * a``) and none writes first (``zero_``, ``fill_``, ``copy_``, random
        init, ``acc[i] = v``, ``out=acc``, ``nn.init``). Shape reads, ``return`` and other callees (kernels) are not reads.

    Why is this bad:
        ``empty`` returns whatever bytes the allocator hands back: often zeros on a fresh CPU allocation, so tests pass;
        on a GPU (the caching allocator reuses freed blocks) or late in a long process, wrong values or NaN.

    Example:
        acc = torch.empty(B, D, device=x.device)
        for chunk in chunks:
            acc += chunk.sum(0)

    Use instead:
        acc = torch.zeros(B, D, device=x.device)  # or write every element before reading it
    """

    code = "TR157"
    title = "Uninitialised torch.empty memory read before it is written"
    category = "memory-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [  # more cases in tests/test_tr157_empty_read_before_write.py
        "import torch\ndef f(T, a, x0):\n    out = torch.empty(T)\n    out[0] = x0\n    for t in range(1, T):\n"
        "        out[t] = out[t - 1] * a\n    return out.sum()\n",
        "import torch as th\ndef f(x, w):\n    buf = x.new_empty(x.shape)\n    th.matmul(x, w, out=buf)\n    buf += 1\n    return buf\n",
        "import torch\ndef f(xs):\n    acc = torch.empty(3)\n    for i, x in enumerate(xs):\n        if i == 0:\n"
        "            acc.copy_(x)\n        else:\n            acc += x\n    return acc\n",
        "import torch\ndef f(x, kernel):\n    out = torch.empty_like(x)\n    kernel[(4,)](x, out, out.numel())\n    return out * 2\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(xs):\n    acc = torch.empty(3, 4)\n    for x in xs:\n        acc += x\n    return acc\n",
                line=3, expected_fix="import torch\ndef f(xs):\n    acc = torch.zeros(3, 4)\n    for x in xs:\n        acc += x\n    return acc\n"),
        Invalid("import torch as th\ndef f(x, idx, src):\n    out = th.empty_like(x, dtype=th.float32)\n    out.index_add_(0, idx, src)\n"
                "    return out\n", line=3, expected_fix="import torch as th\ndef f(x, idx, src):\n"
                "    out = th.zeros_like(x, dtype=th.float32)\n    out.index_add_(0, idx, src)\n    return out\n"),
        Invalid("import torch\ndef scan(x, a):\n    h = x.new_empty(x.shape)\n    for t in range(len(x)):\n        h[t] = h[t - 1] * a + x[t]\n"
                "    return h\n", line=3, expected_fix="import torch\ndef scan(x, a):\n    h = x.new_zeros(x.shape)\n"
                "    for t in range(len(x)):\n        h[t] = h[t - 1] * a + x[t]\n    return h\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        kind = tf if (tf := torch_function(self, node)) in _EMPTY else "new_empty" if is_method_call(self, node, {"new_empty"}) else None
        dims = [a.value for a in ([kwarg(node, "size")] if kwarg(node, "size") else positional(node))]
        if kind is None or any(isinstance(d, cst.Integer) and d.value == "0" for d in dims + [  # empty(0, d): nothing to read
                e.value for d in dims if isinstance(d, (cst.Tuple, cst.List)) for e in d.elements]):
            return
        top = node  # ``torch.empty(n).to(device)`` is just as uninitialised
        while isinstance(p := self.parent(top), cst.Attribute) and p.attr.value in _VIEWS and isinstance(self.parent(p), cst.Call):
            top = self.parent(p)
        assign, stmt = self.parent(top), self.parent(self.parent(top))
        if not (isinstance(assign, cst.Assign) and isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
                and len(assign.targets) == 1 and isinstance(assign.targets[0].target, cst.Name)):
            return
        name, body = assign.targets[0].target.value, self.parent(stmt).body  # followed to the end of its block
        events = self._seq(body[[i for i, s in enumerate(body) if s is stmt][0] + 1:], name)[0]
        reads = sorted((n for k, n in events if k == "R"), key=self.line_of)
        if not reads or any(k == "W" for k, _ in events):
            return
        used = next((f", `{self.code_for(a).strip()}`," for a in self.ancestors(reads[0]) if isinstance(a, cst.BaseSmallStatement)), "")
        func, new = node.func, _EMPTY[kind] if isinstance(node.func, cst.Attribute) else None  # None: suggest ``.zero_()``
        after = source_text(self, node, [(func.attr, new)]) if new else source_text(self, node) + ".zero_()"
        self.report(node, problem=f"`{name}` holds uninitialised memory from `{self.code_for(func)}`, and its first use{used} reads "
                    "its values before anything writes them.",
                    impact="Its values are whatever bytes the allocator returns (often zeros on fresh CPU memory, so tests pass; stale "
                    "data from freed blocks on GPU or in a long process): silently wrong results or NaN.",
                    fix=Fix(before=source_text(self, node), after=after),
                    replacement=node.with_changes(func=func.with_changes(attr=cst.Name(new))) if new else None)

    def _seq(self, stmts, name):
        """(the first use, ``("R"|"W", node)``, on each path through ``stmts``; whether a path falls through untouched)."""
        events = []
        for s in stmts.body if isinstance(stmts, cst.IndentedBlock) else [stmts] if isinstance(stmts, cst.CSTNode) else stmts:
            ev, ft = self._stmt(s, name)
            events += ev
            if not ft:
                return events, False
        return events, True

    def _stmt(self, s, name):
        if isinstance(s, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
            ev = next(filter(None, (self._expr(x, name) for x in s.body)), None)
            return [ev] if ev else [], not ev and not any(isinstance(x, (cst.Return, cst.Raise, cst.Break, cst.Continue)) for x in s.body)
        if not isinstance(s, (cst.If, cst.While, cst.For, cst.With)):  # try, def, match ... that touch it: not followed
            return ([("W", s)], False) if name in names_in(s) else ([], True)
        ev = self._expr(s.iter if isinstance(s, cst.For) else cst.Tuple([cst.Element(i.item) for i in s.items])
                        if isinstance(s, cst.With) else s.test, name)
        if ev or isinstance(s, cst.For) and name in names_in(s.target):
            return [ev or ("W", s)], False
        (body, bft), orelse = self._seq(s.body, name), getattr(s, "orelse", None)
        other, oft = self._seq(orelse.body if isinstance(orelse, cst.Else) else orelse, name) if orelse else ([], True)
        return body + other, bft if isinstance(s, cst.With) else bft or oft or not isinstance(s, cst.If)  # loops may not run

    def _expr(self, node, name):
        for n in (n for part in ([node.value, *node.targets] if isinstance(node, cst.Assign) else [node]) for n in walk(part)):
            p = self.parent(n) if isinstance(n, cst.Name) and n.value == name else None
            if p is not None and not (isinstance(p, cst.Attribute) and p.attr is n or isinstance(p, cst.Arg) and p.keyword is n) \
                    and (kind := self._use(n, name)) != "N":
                return kind, n
        return None

    def _use(self, node: cst.Name, name: str) -> str:
        """``"R"`` reads the values, ``"W"`` writes them or cannot be followed, ``"N"`` neither."""
        chain = [node]  # up to its statement
        while not isinstance(chain[-1], (cst.BaseSmallStatement, cst.BaseCompoundStatement, type(None))):
            chain.append(self.parent(chain[-1]))
        if any(isinstance(a, (cst.Lambda, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp)) or isinstance(a, cst.IfExp)
               and c is not a.test or isinstance(a, cst.BooleanOperation) and c is a.right for c, a in zip(chain, chain[1:])):
            return "W"  # evaluated conditionally or later: not followed
        while True:
            p = self.parent(node)
            if isinstance(p, cst.Attribute) and p.value is node:
                called, attr = isinstance(self.parent(p), cst.Call) and self.parent(p).func is p, p.attr.value
                if attr in _META or attr not in _VIEWS:  # zero_/fill_/copy_/normal_/unknown methods end it as a write
                    return "N" if attr in _META else "R" if called and attr in _READS else "W"
                node = self.parent(p) if called else p
            elif isinstance(p, cst.Subscript) and p.value is node and not isinstance(self.parent(p), cst.AssignTarget):
                node = p
            elif isinstance(p, (cst.AugAssign, cst.BinaryOperation, cst.UnaryOperation, cst.Return, cst.Expr)):
                return "N" if isinstance(p, (cst.Return, cst.Expr)) else "R"  # a returned buffer may be filled by the caller
            elif not isinstance(p, cst.Arg) or p.star or p.keyword is not None and p.keyword.value == "out":
                return "W"
            else:  # an argument: torch math reads it; unknown callees (kernels, collectives) may fill it
                tf, mc = torch_function(self, self.parent(p)), method_call(self.parent(p))
                if tf is not None:
                    return "N" if tf in _META else "R" if tf in _READS or tf.startswith(("nn.functional.", "linalg.")) else "W"
                return "R" if mc and mc[1] in _READS | {"copy_"} or self.qnames(self.parent(p).func) & {"builtins.print"} else "W"
