from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import imports_torch, is_overload_or_setter
from ._padding import abstract_or_super_only, padding_params, position_reductions
from ._torch import atom_code, kwarg, last_part, method_call, names_in, positional, torch_function
from .base import Invalid, Rule

_WHAT = {"reduction": "reduces over every position", "pooling": "pools over every position",
         "attention": "attends to every position", "loss": "averages the loss over every position"}


class PaddingArgumentIgnored(Rule):
    """A function takes padding lengths or a padding mask, never reads them, and reduces over positions.

    What it does:
        Flags a function or ``forward`` with a parameter named for padding (``lengths``, ``lens``,
        ``seq_lens``, ``input_lengths``, ``mask``, ``attention_mask``, ``pad_mask``, ``key_padding_mask``,
        ``src_key_padding_mask``, ``valid``...) that its body never reads, while the body reduces over
        positions in a way padding changes: ``mean``/``sum``/``max``/``logsumexp``/``softmax`` over a dimension,
        pooling (``F.avg_pool1d``, adaptive pools, ``nn`` pooling modules), attention
        (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, transformer encoders) or a loss
        (``F.cross_entropy`` without ``ignore_index``, ``nn.MSELoss()``...). The first such call is reported.
        Prefix ops (``cumsum``) are not reductions here: right padding never reaches their real positions.
        Left alone: parameters with a ``None`` default (API-compatibility slots) or a leading ``_``, abstract
        bodies (``pass``, ``...``, ``raise NotImplementedError``), overrides that only call ``super()``, and
        ``@overload``/``@abstractmethod``/``@override`` methods.

    Why is this bad:
        The caller went to the trouble of describing which positions are padding, and the function drops
        it: the mean divides by the padded length, a max or softmax picks padded positions, a loss counts
        pad tokens. Every example's result depends on how much the batch was padded (on the longest other
        sequence), so training and evaluation silently disagree and nothing fails.

    Example:
        def forward(self, x, lengths):          # x: (B, C, T) padded to the longest sequence
            h = self.conv(x)
            pooled = h.mean(dim=-1)             # averages padded frames too
            return self.fc(pooled)

    Use instead:
        def forward(self, x, lengths):
            h = self.conv(x)
            mask = torch.arange(h.size(-1), device=h.device) < lengths[:, None]   # (B, T)
            pooled = (h * mask[:, None]).sum(-1) / lengths[:, None].clamp_min(1)
            return self.fc(pooled)
    """

    code = "TR629"
    title = "Padding mask or lengths received but never used"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    _H = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
    VALID = [
        _H + "class MotifCNN(nn.Module):\n    def forward(self, x, lengths):\n        h = self.conv(x)\n"
        "        mask = torch.arange(h.size(-1), device=h.device) < lengths[:, None]\n"
        "        pooled = (h * mask[:, None]).sum(-1) / lengths[:, None]\n        return self.fc(pooled)\n",
        _H + "class Layer(nn.Module):\n    def forward(self, x, mask=None):\n        return x.softmax(dim=-1)\n",
        _H + "class Base(nn.Module):\n    def forward(self, x, lengths):\n        raise NotImplementedError\n",
        _H + "class Pool(nn.Module):\n    def forward(self, x, _mask):\n        return x.mean(1)\n",
        _H + "class Child(Base):\n    def forward(self, x, attention_mask):\n        return super().forward(x).mean(1)\n",
        _H + "def masked_mean(x, mask):\n    return (x * mask).sum(1) / mask.sum(1)\n",
        _H + "def loss_fn(logits, y, lengths):\n    return F.cross_entropy(logits, y, ignore_index=-100)\n",
    ]
    INVALID = [
        Invalid(_H + "class MotifCNN(nn.Module):\n    def forward(self, x, lengths):\n        h = self.conv(x)\n"
                "        pooled = h.mean(dim=-1)\n        return self.fc(pooled)\n", line=7),
        Invalid(_H + "def attend(q, k, v, key_padding_mask):\n    s = q @ k.transpose(-2, -1)\n"
                "    return torch.softmax(s, dim=-1) @ v\n", line=6),
        Invalid(_H + "class Enc(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.pool = nn.AdaptiveMaxPool1d(1)\n    def forward(self, x, seq_lens):\n"
                "        return self.pool(self.conv(x)).squeeze(-1)\n", line=9),
        Invalid(_H + "def seq_loss(logits, targets, pad_mask):\n    return F.cross_entropy(logits.transpose(1, 2), targets)\n",
                line=5),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        params = padding_params(node)
        if not params or is_overload_or_setter(self, node) or not imports_torch(self):
            return
        read = names_in(node.body)
        unused = [p for p in params if p not in read]
        if not unused or read & {"locals", "vars"} or abstract_or_super_only(node.body):
            return
        found = position_reductions(self, node)
        if not found:
            return
        call, kind = found[0]
        names = " and ".join(f"`{p}`" for p in unused)
        self.report(
            call,
            problem=(f"`{node.name.value}` takes {names} but never reads {'them' if len(unused) > 1 else 'it'}, "
                     f"and `{self.code_for(call)}` {_WHAT[kind]}, padding included."),
            impact=("Padded positions enter the result: means are divided by the padded length, max/softmax/"
                    "attention can pick padding, losses count pad tokens. Each example's output depends on how "
                    "long the other sequences in its batch are, silently."),
            fix=Fix(before=self.code_for(call), after=self._after(call, kind, unused[0])),
        )

    def _after(self, call: cst.Call, kind: str, param: str) -> str:
        """The call rewritten to exclude padding where it is a plain reduction; else the call with a note."""
        mc, tf, pos = method_call(call), torch_function(self, call), positional(call)
        x, rest = (mc[0], pos) if tf is None and mc is not None else (pos[0].value if pos else None, pos[1:])
        name = last_part(tf) if tf is not None else mc[1] if mc is not None else ""
        dim = kwarg(call, "dim") or (rest[0] if rest else None)
        lengths = "len" in param or param == "valid"
        keep, drop = ("mask", "~mask") if lengths else (f"~{param}", param) if "pad" in param else (param, f"~{param}")
        how = f"  # mask = torch.arange(T, device=x.device) < {param}[:, None], broadcast to x" if lengths else ""
        code = self.code_for(call)
        if kind == "loss":
            return f"{code}  # with reduction='none', then (loss * {keep}).sum() / {keep}.sum(){how}"
        if kind != "reduction" or x is None or dim is None:
            return f"{code}  # pass or apply `{param}` so padded positions ({drop}) take no part{how}"
        xs, d = atom_code(self, x), (f"{dim.keyword.value}=" if dim.keyword else "") + self.code_for(dim.value)
        if name in ("mean", "nanmean", "sum", "nansum"):
            total = f"({xs} * {keep}).sum({d})"
            return (total if name.endswith("sum") else f"{total} / {keep}.sum({d}).clamp_min(1)") + how
        return f"{xs}.masked_fill({drop}, float('-inf')).{name}({d}){how}"
