"""Leave the user's objects as the probe and the checks found them.

A harness usually reaches objects that outlive it: a model, an optimizer, a leaf tensor kept in the
notebook. Running it changes them: ``model.to(device)`` on the ``meta`` device swaps the parameters'
data for storage-less tensors (the trained weights are gone), every backward pass accumulates into
``.grad``, a forward in train mode moves BatchNorm's running statistics, an ``opt.step()`` moves the
weights and the optimizer's state. Two context managers undo that:

* :func:`modules_kept` around a meta run: every module a ``.to()``/``.cuda()``/``.float()``/... call
  (all go through ``Module._apply``) reaches during the block gets its parameters, buffers and
  gradients back on exit.
* :class:`UserState` around a whole probe, check or comparison: the gradients of every parameter
  and leaf tensor the runs touch are put aside at first sight (each run starts from a clean step, as
  after ``zero_grad(set_to_none=True)``) and restored on exit; for the objects the harness reaches
  by name (the globals its code names, its closure, a bound ``self``, ``functools.partial``
  arguments) also the train/eval mode, the buffers' values, the parameters' values before an
  optimizer first steps them, and the optimizer's state. Parameters changed in place by other means
  are reported (``changed``), not copied: copying every weight up front would double the memory of
  the model being measured.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.optim import Optimizer


@contextlib.contextmanager
def modules_kept() -> Iterator[None]:
    """Undo on exit what ``Module._apply`` did during the block (see module doc)."""
    original = nn.Module._apply
    saved: Dict[int, Tuple[nn.Module, dict, dict, list]] = {}

    def _apply(self, *args, **kwargs):
        for m in self.modules():
            if id(m) not in saved:
                params = [(p, p.data, p.grad) for p in m._parameters.values() if p is not None]
                saved[id(m)] = (m, dict(m._parameters), dict(m._buffers), params)
        return original(self, *args, **kwargs)

    nn.Module._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module._apply = original  # type: ignore[method-assign]
        for m, params, buffers, datas in saved.values():
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for p, data, grad in datas:
                p.data = data
                p.grad = grad
            if hasattr(m, "_init_flat_weights"):  # RNNs keep a list of their parameters
                m._init_flat_weights()


def _roots(fns: Tuple[Optional[Callable], ...]) -> List[Any]:
    """The objects a callable reaches by name: the globals its code names (nested functions
    included), its closure cells, a bound ``self``, ``functools.partial`` arguments."""
    out: List[Any] = []
    seen_fns: set = set()

    def visit(fn: Any, depth: int = 0) -> None:
        if fn is None or id(fn) in seen_fns or depth > 3:
            return
        seen_fns.add(id(fn))
        if isinstance(fn, functools.partial):
            out.extend(fn.args)
            out.extend(fn.keywords.values())
            visit(fn.func, depth + 1)
            return
        if isinstance(fn, types.MethodType):
            out.append(fn.__self__)
            visit(fn.__func__, depth + 1)
            return
        if isinstance(fn, nn.Module):
            out.append(fn)
            return
        code = getattr(fn, "__code__", None)
        if code is None:
            call = getattr(type(fn), "__call__", None)
            if call is not None and not isinstance(fn, type):
                out.append(fn)
            return
        names = set()
        stack = [code]
        while stack:
            c = stack.pop()
            names.update(c.co_names)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        glb = getattr(fn, "__globals__", {})
        for n in names:
            if n in glb:
                v = glb[n]
                out.append(v)
                if isinstance(v, types.FunctionType):  # helpers the harness calls
                    visit(v, depth + 1)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            out.append(v)
            if isinstance(v, types.FunctionType):
                visit(v, depth + 1)

    for f in fns:
        visit(f)
    return out


class UserState:
    """Puts back what the runs changed on the user's objects (see module doc). Use as a context
    manager; :meth:`watching` discovers the modules a run calls (install it around instrumented runs
    only: a global forward hook slows every module call); :meth:`clear` sets the known gradients to
    None before a run."""

    def __init__(self, *fns: Optional[Callable]) -> None:
        self._grads: Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._seen_modules: set = set()
        self._owned: Dict[int, torch.Tensor] = {}  # parameters the harness reaches by name
        self._versions: Dict[int, int] = {}
        self._values: Dict[int, torch.Tensor] = {}  # saved before an optimizer first stepped them
        self._modes: List[Tuple[nn.Module, bool]] = []
        self._buffers: List[Tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        self._optimizers: Dict[int, Tuple[Optimizer, Optional[dict]]] = {}
        self._handles: List[Any] = []
        self.changed: List[str] = []
        self._fns = fns

    # -- discovery
    def _see_tensor(self, t: Any) -> bool:
        """Put a leaf's gradient aside at first sight; False for a tensor on meta (a meta run's
        stand-in, which :func:`modules_kept` restores): it is seen again in a real run."""
        if not (isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad):
            return True
        if t.device.type == "meta":
            return False
        if id(t) not in self._grads:
            self._grads[id(t)] = (t, t.grad)
            t.grad = None
        return True

    def _see_module(self, m: nn.Module) -> None:
        if id(m) in self._seen_modules:
            return
        if all([self._see_tensor(p) for p in m.parameters()]):
            self._seen_modules.add(id(m))

    def _own(self, root: Any, depth: int = 0) -> None:
        if isinstance(root, nn.Module):
            for m in root.modules():
                if id(m) in self._seen_modules:
                    continue
                self._modes.append((m, m.training))
                for name, b in m._buffers.items():
                    if b is not None and b.device.type != "meta":
                        self._buffers.append((m, name, b, b.detach().clone()))
                self._see_module(m)
            for p in root.parameters():
                self._owned[id(p)] = p
                self._versions[id(p)] = p._version
        elif isinstance(root, Optimizer):
            self._optimizers.setdefault(id(root), (root, None))
            for group in root.param_groups:
                for p in group["params"]:
                    self._see_tensor(p)
                    self._owned[id(p)] = p
                    self._versions[id(p)] = p._version
        elif isinstance(root, torch.Tensor):
            self._see_tensor(root)
            if root.is_leaf and root.requires_grad and root.device.type != "meta":
                self._owned[id(root)] = root
                self._versions[id(root)] = root._version
        elif depth == 0 and not isinstance(root, (type, types.ModuleType, types.FunctionType)):
            # a plain object holding the model (a trainer, a config): one level into its attributes
            for v in list(getattr(root, "__dict__", {}).values())[:100]:
                if isinstance(v, (nn.Module, Optimizer, torch.Tensor)):
                    self._own(v, depth + 1)

    def _before_step(self, opt: Optimizer, args, kwargs) -> None:
        entry = self._optimizers.get(id(opt))
        if entry is not None and entry[1] is None:
            self._optimizers[id(opt)] = (opt, copy.deepcopy(opt.state_dict()))
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in self._owned and id(p) not in self._values:
                    self._values[id(p)] = p.detach().clone()

    # -- use
    def __enter__(self) -> "UserState":
        for root in _roots(self._fns):
            self._own(root)
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        return self

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        handle = nn.modules.module.register_module_forward_pre_hook(lambda m, args: self._see_module(m))
        try:
            yield
        finally:
            handle.remove()

    def wrap(self, fn: Callable) -> Callable:
        """``fn`` with the known gradients cleared before each call (what ``zero_grad()`` does at the
        start of a training step), so runs do not accumulate into one another."""

        @functools.wraps(fn)
        def run(*args, **kwargs):
            self.clear()
            return fn(*args, **kwargs)

        return run

    def clear(self) -> None:
        for t, _ in self._grads.values():
            t.grad = None

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        with torch.no_grad():
            for key, p in self._owned.items():
                if key in self._values:
                    p.copy_(self._values[key])
                elif p._version != self._versions[key] and p.device.type != "meta":
                    self.changed.append(f"a parameter of shape {tuple(p.shape)} was modified in place by the "
                                        "harness (not by an optimizer step); its values were not restored")
            for m, name, b, value in self._buffers:
                if m._buffers.get(name) is b and b.shape == value.shape:
                    b.copy_(value)
        for opt, state in self._optimizers.values():
            if state is not None:
                opt.load_state_dict(state)
        for m, mode in self._modes:
            m.training = mode  # the attribute itself: train() recurses and may be overridden
        for t, grad in self._grads.values():
            t.grad = grad
        self._values.clear()
