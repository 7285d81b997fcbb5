"""TR016 ``gradcheck`` of the custom ``torch.autograd.Function`` classes the harness calls.

Subclasses of ``torch.autograd.Function`` defined in the harness's file get a temporary ``apply``
wrapper (removed afterwards) that records the arguments of their first call; each is then checked in
float64 against finite differences on those (small) inputs.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Tuple

import torch

from ...findings import Fix
from .._frames import def_site
from ..rules import make_finding
from ._base import CheckContext

MAX_NUMEL = 256


def _subclasses(cls) -> List[type]:
    out, stack = [], list(cls.__subclasses__())
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(c.__subclasses__())
    return out


def _same_file(a, path: str) -> bool:
    try:
        f = inspect.getsourcefile(a)
    except TypeError:
        return False
    return f is not None and os.path.abspath(f) == os.path.abspath(path)


def user_functions(ctx: CheckContext) -> List[type]:
    site = ctx.location()
    if site is None:
        return []
    return [c for c in _subclasses(torch.autograd.Function)
            if c.__module__ != "torch" and not c.__module__.startswith("torch.") and _same_file(c, site[0])]


def check_gradcheck(ctx: CheckContext, small_size: Any = 4) -> list:
    classes = user_functions(ctx)
    if not classes:
        return []
    calls: Dict[type, Tuple[tuple, dict]] = {}
    had_own = {c: "apply" in c.__dict__ for c in classes}
    originals = {c: c.__dict__.get("apply") for c in classes}

    def wrap(cls):
        base_apply = super(cls, cls).apply if not had_own[cls] else originals[cls].__get__(None, cls)

        def apply(*args, **kwargs):
            if cls not in calls:
                calls[cls] = (tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs))
            return base_apply(*args, **kwargs)
        return staticmethod(apply)

    for c in classes:
        setattr(c, "apply", wrap(c))
    out = None
    try:
        small = CheckContext(ctx.fn, small_size, ctx.make_inputs, ctx.device, ctx.notes)
        try:
            out = small.run()
        except Exception:
            out = ctx.run()
    finally:
        for c in classes:
            if had_own[c]:
                setattr(c, "apply", originals[c])
            else:
                delattr(c, "apply")
        del out
    findings = []
    for cls, (args, kwargs) in calls.items():
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if sum(t.numel() for t in tensors) > MAX_NUMEL:
            ctx.notes.append(f"TR016 gradcheck of {cls.__name__} skipped: inputs larger than {MAX_NUMEL} elements "
                             f"even at T={small_size}")
            continue
        inputs = [a.to(torch.float64).requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                  else a for a in args]
        diff_idx = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]
        if not diff_idx:
            continue

        def f(*xs, _inputs=inputs, _idx=diff_idx, _cls=cls, _kw=kwargs):
            full = list(_inputs)
            for i, x in zip(_idx, xs):
                full[i] = x
            return _cls.apply(*full, **_kw)

        try:
            torch.autograd.gradcheck(f, tuple(inputs[i] for i in diff_idx), eps=1e-6, atol=1e-5, rtol=1e-3,
                                     raise_exception=True)
        except Exception as e:
            msg = " ".join(str(e).split())[:500]
            site = def_site(cls.backward) or def_site(cls)
            findings.append(make_finding(
                "TR016", f"{cls.__name__}.backward disagrees with finite differences", site,
                problem=f"torch.autograd.gradcheck (float64, inputs {[list(inputs[i].shape) for i in diff_idx]}) "
                        f"fails: {msg}",
                impact="training follows wrong gradients: silent wrong results",
                fix=Fix(before="return grad_output * wrong_derivative", after="return grad_output * d(forward)/d(input)"),
                evidence={"function": cls.__qualname__, "error": msg[:300]}))
    return findings
