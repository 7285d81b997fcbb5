"""TR012 gradient flow: one forward + backward.

Reports a loss without ``grad_fn`` although inputs require grad, and parameters / leaf inputs whose
``.grad`` is None, all zero or non-finite after backward. A ``TorchFunctionMode`` on ``detach``
pinpoints where a graph-carrying tensor is cut (it does not see ``.data``); a global module forward
pre-hook (removed afterwards) finds the modules that ran with gradients enabled and where they were
called. A leaf counts as used only by a call whose output has a ``grad_fn`` (initialisation such as
``uniform_``/``fill_`` under ``no_grad`` and copies do not count). A loss computed with gradients
disabled (``torch.no_grad``/``inference_mode``: an inference harness) gets a note, not a finding.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...findings import Fix
from .._frames import user_site
from ..rules import make_finding
from ._base import CheckContext, describe
from .._harness import returned_tensor
from ._sites import is_complex_result, loss_of


class _Watch(TorchFunctionMode):
    """Where graph-carrying tensors are detached, and the leaf tensors requiring grad that the run uses
    (with the site of their first use). Strong references, dropped when the check ends."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: List[Any] = []
        self.leaves: Dict[int, Any] = {}
        self.no_grad: Dict[int, Any] = {}  # id -> (weakref, site) of tensors returned with grad disabled

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("detach", "detach_") and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.sites.append(user_site())
            return func(*args, **kwargs)
        if name in ("requires_grad_", "__get__", "__set__"):
            return func(*args, **kwargs)
        leaves = [t for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.requires_grad and t.is_leaf and id(t) not in self.leaves]
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if leaves and any(t.grad_fn is not None for t in outs):  # used in the graph, not initialised or copied
            site = user_site()
            for t in leaves:
                self.leaves.setdefault(id(t), (t, site))
        if outs and not torch.is_grad_enabled():
            site = user_site()
            for t in outs:
                try:
                    self.no_grad[id(t)] = (weakref.ref(t), site)
                except TypeError:
                    pass
        return out

    def made_without_grad(self, t: Any) -> Optional[Tuple[Any]]:
        """``(site,)`` when ``t`` came from a torch call with grad disabled (or is an inference tensor)."""
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.no_grad.get(id(t))
        if hit is not None and hit[0]() is t:
            return (hit[1],)
        return (None,) if t.is_inference() else None


def check_grads(ctx: CheckContext) -> list:
    watch = _Watch()
    modules: Dict[int, Any] = {}

    def pre_hook(module, inputs):
        if id(module) not in modules and torch.is_grad_enabled():  # a module run under no_grad is not trained
            modules[id(module)] = (module, user_site())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    out = None
    try:
        with watch:
            out = ctx.run()
        loss = loss_of(out)
        if loss is None:
            ctx.notes.append("TR012 gradient check skipped: the harness returned no floating tensor (return the loss)")
            return []
        if is_complex_result(out):
            ctx.notes.append("TR012: the harness returned a complex tensor; backward ran from |out|.sum()")
        params = _params(modules)
        inputs = list(watch.leaves.values())
        wants_grad = [t for t, _ in inputs] + [p for p, _, _ in params]
        if loss.grad_fn is None:
            disabled = watch.made_without_grad(returned_tensor(out))
            if disabled is not None:
                where = f" at {describe(disabled[0])}" if disabled[0] else ""
                ctx.notes.append(f"TR012 gradient check skipped: the loss was computed with gradients disabled{where} "
                                 "(torch.no_grad / inference_mode: an inference harness)")
                return []
            if not wants_grad:
                ctx.notes.append("TR012 gradient check skipped: nothing in the run requires grad")
                return []
            site = watch.sites[0] if watch.sites else ctx.location()
            return [make_finding(
                "TR012", "The loss has no grad_fn: the graph is cut", site,
                problem="the value returned has no grad_fn although tensors used in the run require grad"
                        + (f"; a graph-carrying tensor is detached at {describe(watch.sites[0])}" if watch.sites
                           else " (a .detach(), .data, torch.no_grad() or a round-trip through Python numbers)"),
                impact="backward() raises, or (with a second loss term) these parameters silently never train",
                fix=Fix(before="h = h.detach()", after="h = h  # keep the graph; detach only what must not train"),
                evidence={"detach_sites": [describe(s) for s in watch.sites[:5]],
                          "tensors_requiring_grad": len(wants_grad)})]
        try:
            loss.backward()
        except RuntimeError as e:
            if "second time" not in str(e):
                raise
            ctx.notes.append("TR012: the harness already ran backward; its gradients are checked")
        return _grad_findings(ctx, params, inputs, watch.sites)
    finally:
        handle.remove()
        modules.clear()
        watch.leaves.clear()
        watch.no_grad.clear()
        del out


def _params(modules) -> List[Any]:
    out, seen = [], set()
    for m, site in modules.values():
        for name, p in m.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((p, f"{type(m).__name__}.{name}", site))
    return out


def _grad_findings(ctx: CheckContext, params, inputs, detach_sites) -> list:
    findings = []
    none, zero, bad = [], [], []
    param_ids = {id(p) for p, _, _ in params}
    items = [(p, name, site) for p, name, site in params]
    items += [(t, f"input {list(t.shape)}", site) for t, site in inputs if id(t) not in param_ids]
    for t, name, site in items:
        g = t.grad
        if g is not None and g.layout != torch.strided:  # sparse gradients (nn.Embedding(sparse=True))
            g = g.coalesce().values() if g.layout == torch.sparse_coo else g.values()
        if g is None:
            none.append((name, site))
        elif not bool(torch.isfinite(g).all()):
            bad.append((name, site))
        elif not bool(g.any()):
            zero.append((name, site))
    if none:
        site = detach_sites[0] if detach_sites else none[0][1]
        findings.append(make_finding(
            "TR012", f"{len(none)} tensor(s) requiring grad receive no gradient", site, severity="high",
            problem="after backward, .grad is None for: " + ", ".join(n for n, _ in none[:8])
                    + (f"; a graph-carrying tensor is detached at {describe(detach_sites[0])}" if detach_sites else ""),
            impact="these parameters never train; the model silently underperforms",
            evidence={"no_grad": [n for n, _ in none], "detach_sites": [describe(s) for s in detach_sites[:5]]}))
    if bad:
        findings.append(make_finding(
            "TR012", f"{len(bad)} tensor(s) get non-finite gradients", bad[0][1], severity="critical",
            problem="after backward, .grad contains NaN or Inf for: " + ", ".join(n for n, _ in bad[:8]),
            impact="one optimizer step turns the parameters into NaN",
            evidence={"non_finite_grad": [n for n, _ in bad]}))
    if zero:
        findings.append(make_finding(
            "TR012", f"{len(zero)} tensor(s) get all-zero gradients", zero[0][1], severity="medium",
            problem="after backward, .grad is exactly zero everywhere for: " + ", ".join(n for n, _ in zero[:8]),
            impact="these parameters do not learn from this loss (dead units, a masked path, or a constant)",
            evidence={"zero_grad": [n for n, _ in zero]}))
    return findings
