"""TR016 ``gradcheck`` of the custom ``torch.autograd.Function`` classes the harness calls.

Subclasses of ``torch.autograd.Function`` defined in the harness's file get a temporary ``forward``
wrapper (removed afterwards; ``Function.apply`` looks ``forward`` up at call time, so calls through an
alias such as ``square = Square.apply`` bound at import are seen too) that records the arguments of
their first call that needs a gradient; each is then checked in float64 against finite differences
on those (small) inputs, differentiating only the inputs that required grad in that call. A Function
the harness names (``Cls``, ``Cls.apply`` or an alias) but never calls in the run gets a note.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Dict, List, Tuple

import torch
from torch.autograd.function import _is_setup_context_defined

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


def _referenced(fn: Any) -> set:
    """The Function classes the harness's code names: ``Cls`` / ``Cls.apply`` or a global alias of
    ``Cls.apply``."""
    fn = inspect.unwrap(fn)
    code, glb = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    out, stack = set(), [code] if code is not None else []
    while stack:
        co = stack.pop()
        for name in co.co_names:
            v = glb.get(name)
            if isinstance(v, type):
                out.add(v)
            elif isinstance(getattr(v, "__self__", None), type):  # a bound classmethod: Cls.apply
                out.add(v.__self__)
        stack.extend(c for c in co.co_consts if inspect.iscode(c))
    return out


def _as_input(a: Any) -> Any:
    if not isinstance(a, _Recorded):
        return a
    t = a.value
    if t.is_floating_point():
        t = t.to(torch.float64)
    elif t.is_complex():
        t = t.to(torch.complex128)
    return t.requires_grad_(True) if a.requires_grad and (t.is_floating_point() or t.is_complex()) else t


def _record(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return _Recorded(a.detach().clone(), a.requires_grad)
    return a


class _Recorded:
    """A tensor argument as it was passed: its value and whether it required grad."""
    __slots__ = ("value", "requires_grad")

    def __init__(self, value: torch.Tensor, requires_grad: bool) -> None:
        self.value, self.requires_grad = value, requires_grad


def _wants_grad(args) -> bool:
    return any(isinstance(a, _Recorded) and a.requires_grad for a in args)


def check_gradcheck(ctx: CheckContext, small_size: Any = 4) -> list:
    classes = user_functions(ctx)
    if not classes:
        return []
    calls: Dict[type, Tuple[tuple, dict]] = {}
    # Function.apply looks cls.forward up at call time (in C++), so wrapping forward also catches calls
    # through an alias bound before the check (`square = Square.apply`)
    descriptors = {c: c.__dict__.get("forward") for c in classes}
    functions = {c: c.forward for c in classes}

    def wrap(cls):
        fn = functions[cls]
        with_ctx = not _is_setup_context_defined(getattr(cls, "setup_context", None))

        @functools.wraps(fn)
        def forward(*args, **kwargs):
            inputs = args[1:] if with_ctx else args
            if cls not in calls or (not _wants_grad(calls[cls][0]) and any(
                    isinstance(a, torch.Tensor) and a.requires_grad for a in inputs)):
                calls[cls] = (tuple(_record(a) for a in inputs), dict(kwargs))
            return fn(*args, **kwargs)
        return staticmethod(forward)

    for c in classes:
        setattr(c, "forward", wrap(c))
    out = None
    try:
        small = CheckContext(ctx.fn, small_size, ctx.make_inputs, ctx.device, ctx.notes)
        try:
            out = small.run()
        except Exception:
            out = ctx.run()
    finally:
        for c in classes:
            if descriptors[c] is not None:
                setattr(c, "forward", descriptors[c])
            else:
                delattr(c, "forward")
        del out
    named = _referenced(ctx.fn)
    unused = [c.__name__ for c in classes if c not in calls and c in named]
    if unused:
        ctx.notes.append(f"TR016: {', '.join(unused)} named in the harness but not called when it ran "
                         f"(at T={small_size}): not gradchecked")
    findings = []
    for cls, (args, kwargs) in calls.items():
        tensors = [a.value for a in args if isinstance(a, _Recorded)]
        if not _wants_grad(args):
            ctx.notes.append(f"TR016 gradcheck of {cls.__name__} skipped: no input required grad when the harness "
                             "called it (its backward never runs)")
            continue
        if sum(t.numel() for t in tensors) > MAX_NUMEL:
            ctx.notes.append(f"TR016 gradcheck of {cls.__name__} skipped: inputs larger than {MAX_NUMEL} elements "
                             f"even at T={small_size}")
            continue
        # float64 for every floating input; differentiate only those that required grad in the recorded call
        # (a side input such as a fixed weight may legitimately get None from backward)
        inputs = [_as_input(a) for a in args]
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
