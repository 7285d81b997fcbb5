"""TR013 NaN/Inf: the first op that produces a non-finite value from finite inputs.

A ``TorchDispatchMode`` checks ``isfinite(out).all()`` after each floating op (≈12 µs per op) during
one forward and one backward; ops whose inputs already hold NaN/Inf only propagate it and are not
reported. The finding names the op and the user's line.
"""
from __future__ import annotations

from typing import Any, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...findings import Fix
from .._frames import user_site
from ..rules import make_finding
from ._base import CheckContext, as_loss, describe

_SKIP = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "detach",
         "_local_scalar_dense", "lift_fresh", "alias")


def _finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0 or t.device.type == "meta":
        return True
    return bool(torch.isfinite(t).all())


class _NonFinite(TorchDispatchMode):
    def __init__(self, limit: int = 3) -> None:
        super().__init__()
        self.hits: List[Any] = []
        self.limit = limit
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self.hits) >= self.limit or func.overloadpacket.__name__ in _SKIP:
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if all(_finite(t) for t in outs):
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func._schema.is_mutable:  # in-place: the input now holds the output; judge by the op alone
            ins_finite = True
        else:
            ins_finite = all(_finite(t) for t in ins)
        if ins_finite:
            bad = next(t for t in outs if not _finite(t))
            n_nan = int(torch.isnan(bad).sum()) if bad.is_floating_point() else 0
            n_inf = int(torch.isinf(bad).sum()) if bad.is_floating_point() else 0
            self.hits.append({"op": func.overloadpacket.__name__, "site": user_site(), "phase": self.phase,
                              "nan": n_nan, "inf": n_inf, "numel": bad.numel()})
        return out


def check_nonfinite(ctx: CheckContext) -> list:
    mode = _NonFinite()
    out = None
    try:
        with mode:
            out = ctx.run()
            loss = as_loss(out)
            if loss is not None and loss.grad_fn is not None and not mode.hits:
                mode.phase = "backward"
                loss.backward()
    finally:
        del out
    findings = []
    for h in mode.hits[:1]:
        what = " and ".join(x for x, n in (("NaN", h["nan"]), ("Inf", h["inf"])) if n) or "NaN/Inf"
        findings.append(make_finding(
            "TR013", f"{h['op']} produces {what} from finite inputs ({h['phase']})", h["site"],
            problem=f"aten.{h['op']} returned {h['nan']} NaN and {h['inf']} Inf values out of {h['numel']:,} "
                    f"during the {h['phase']} pass, although its inputs were finite; everything downstream is "
                    "poisoned.",
            impact="the loss and the gradients become NaN; training diverges silently",
            fix=Fix(before="torch.log(p)", after="torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))  "
                    "# or work in log space: torch.logsumexp / log_softmax"),
            evidence={k: h[k] for k in ("op", "phase", "nan", "inf", "numel")}))
    if len(mode.hits) > 1:
        ctx.notes.append("TR013: later non-finite origins: " + ", ".join(
            f"{h['op']} at {describe(h['site'])}" for h in mode.hits[1:]))
    return findings
