"""TR010 device mismatch: run with the inputs on ``meta`` (a stand-in for "not the CPU").

A ``TorchFunctionMode`` sees the user's own keyword arguments: a factory called without ``device=``
creates a CPU tensor (the bug on a GPU) and its call site is remembered. A ``TorchDispatchMode`` flags
ops that mix devices (``meta @ cpu`` does not raise by itself); 0-dim CPU tensors are allowed, as on a
real GPU. The finding points at the factory that made the CPU tensor when known (also through CPU ops
that derive a new tensor from it, ``arange(T).float()``), else at the op.
Data-dependent calls are answered as in the meta run (:mod:`..meta`).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...findings import Fix
from .._frames import site_from_traceback, source_line, user_site
from ..meta import _FACTORIES, MetaSkip, _Answers, _Shim
from ..rules import make_finding
from ._base import CheckContext, describe

_LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
         torch.randn_like, torch.randint_like}
_CPU_MAKERS = _FACTORIES - _LIKE | {torch.from_numpy}


class _Origins(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.origins: Dict[int, Tuple[Any, str, Any]] = {}  # storage cdata -> (site, call, weakref)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CPU_MAKERS and kwargs.get("device") is None and isinstance(out, torch.Tensor) \
                and out.device.type == "cpu":
            import weakref

            try:
                self.origins[out.untyped_storage()._cdata] = (user_site(), getattr(func, "__name__", str(func)),
                                                               weakref.ref(out.untyped_storage()))
            except (RuntimeError, TypeError):
                pass
        elif self.origins and isinstance(out, torch.Tensor) and out.device.type == "cpu":
            self._inherit(out, args, kwargs)
        return out

    def _inherit(self, out: torch.Tensor, args: Any, kwargs: Any) -> None:
        """A CPU tensor computed from a factory's CPU tensor (``arange(T).float()``, ``ones(n) * 2``)
        keeps the factory as its origin, so the finding points at the missing ``device=``."""
        import weakref

        try:
            st = out.untyped_storage()
        except (RuntimeError, TypeError):
            return
        if self.origin(out) is not None:
            return
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                hit = self.origin(t)
                if hit is not None:
                    self.origins[st._cdata] = (hit[0], hit[1], weakref.ref(st))
                    return

    def origin(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
        except RuntimeError:
            return None
        hit = self.origins.get(st._cdata)
        if hit is None or hit[2]() is not st:
            return None
        return hit


class _Mixing(TorchDispatchMode):
    def __init__(self, origins: _Origins, answers: _Answers) -> None:
        super().__init__()
        self.origins_mode = origins
        self.answers = answers
        self.events: List[Dict[str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devs = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        is_copy = func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_, torch.ops.aten.lift_fresh)
        if len(devs) > 1 and not is_copy:
            cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
            origin = next((o for o in (self.origins_mode.origin(t) for t in cpu) if o is not None), None)
            self.events.append({"op": str(func.overloadpacket.__name__), "site": user_site(),
                                "origin": origin[0] if origin else None,
                                "factory": origin[1] if origin else None,
                                "shapes": [list(t.shape) for t in cpu][:3]})
            # go on as a GPU would not: run it on meta so the rest of the code is still checked
            args, kwargs = _cpu_to_meta((args, kwargs))
        out = self.answers(func, args, kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        return out


def _cpu_to_meta(obj):
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) and t.device.type == "cpu"
                    and t.dim() > 0 else t, obj)


def check_devices(ctx: CheckContext) -> list:
    if not ctx.can_run_on_meta():
        ctx.notes.append("TR010 device check skipped: the harness takes no device= argument and no "
                         "make_inputs was given, so its inputs cannot be placed off the CPU")
        return []
    assumptions: List[str] = []
    record = assumptions.append
    deadline = time.perf_counter() + 30.0
    origins = _Origins()
    mixing = _Mixing(origins, _Answers(record, deadline))
    shim = _Shim(record, deadline, redirect_factories=False)
    out = None
    try:
        with shim, origins, mixing:  # origins innermost of the function modes: sees the user's kwargs
            out = ctx.run_inputs_on_meta()
    except MetaSkip as e:
        ctx.notes.append(f"TR010 device check stopped early: {e}")
    except Exception as e:
        site = site_from_traceback(e.__traceback__)
        ctx.notes.append(f"TR010 device check stopped at {describe(site)}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    finally:
        del out
    findings = []
    seen = set()
    for ev in mixing.events:
        key = ev["origin"] or ev["site"]
        if key in seen:
            continue
        seen.add(key)
        if ev["origin"] is not None:
            direct = f"{ev['factory']}(" in source_line(ev["origin"][0], ev["origin"][1])
            title = (f"torch.{ev['factory']}() without device= creates a CPU tensor" if direct else
                     "A tensor made here stays on the CPU (a module or helper creates it without device=)")
            what = (f"torch.{ev['factory']}(...) is called without device=" if direct else
                    f"this line creates a tensor through torch.{ev['factory']} inside a module or helper (e.g. "
                    "the parameters of an nn.Module that is never moved with .to(device))")
            findings.append(make_finding(
                "TR010", title, ev["origin"],
                problem=f"{what}, so the tensor is made on the CPU while the inputs are on another device; it "
                        f"is then used by {ev['op']} at {describe(ev['site'])}.",
                impact="on a GPU this raises 'Expected all tensors to be on the same device' (or silently "
                       "runs on the CPU and copies every step)",
                fix=Fix(before=f"torch.{ev['factory']}(...)", after=f"torch.{ev['factory']}(..., device=x.device)")
                if direct else Fix(before="model = Net()", after="model = Net().to(x.device)"),
                evidence={"op": ev["op"], "used_at": describe(ev["site"]), "cpu_shapes": ev["shapes"]}))
        else:
            findings.append(make_finding(
                "TR010", f"{ev['op']} mixes a CPU tensor with tensors on another device", ev["site"],
                problem=f"{ev['op']} gets a CPU tensor of shape {ev['shapes'][0] if ev['shapes'] else '?'} "
                        "while its other inputs are on another device.",
                impact="on a GPU this raises 'Expected all tensors to be on the same device'",
                fix=Fix(before="op(x_on_gpu, cpu_tensor)", after="op(x_on_gpu, cpu_tensor.to(x_on_gpu.device))"),
                evidence={"op": ev["op"], "cpu_shapes": ev["shapes"]}))
    if assumptions:
        ctx.notes.append(f"TR010 device check answered {len(assumptions)} data-dependent call(s) with assumptions")
    return findings
