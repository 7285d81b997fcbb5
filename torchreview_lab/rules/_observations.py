"""Positive observations: well-implemented patterns the engine recognises.

Not rules (they report nothing): a visitor that runs in the same batched visit as the rules and
records, once per kind, what the code does well, for the report's *Positive Observations*.
"""
from __future__ import annotations

import libcst as cst

from ._torch import dotted_name, is_method_call, kwarg, torch_function
from .base import Rule

_LOG_SPACE = {"logsumexp", "log_softmax", "nn.functional.log_softmax", "special.logsumexp", "logaddexp",
              "nn.functional.logsigmoid"}
_DEVICE_MATCHED_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
_LIKE = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like"}
_NO_GRAD = {"no_grad", "inference_mode"}
_CHECKS = {"testing.assert_close", "testing.assert_allclose", "allclose", "autograd.gradcheck",
           "autograd.gradgradcheck"}

TEXT = {
    "log-space": "Log-space arithmetic with `logsumexp`/`log_softmax` keeps long products of probabilities finite.",
    "device-matched": "New tensors follow the inputs' device (`device=x.device`, `x.new_zeros`, `*_like`), so the code runs unchanged on a GPU.",
    "no-grad": "Evaluation and bookkeeping run under `torch.no_grad()`/`inference_mode()`, so no autograd graph is kept.",
    "max-shift": "Exponentials are taken after subtracting the maximum (the stable softmax/logsumexp trick).",
    "checks": "Results are checked against references with `torch.testing.assert_close`/`gradcheck`.",
    "validation": "Inputs are validated with explicit exceptions that name the expected shape.",
}


class Observer(cst.BatchableCSTVisitor):
    METADATA_DEPENDENCIES = Rule.METADATA_DEPENDENCIES

    def __init__(self, ctx) -> None:
        super().__init__()
        self.ctx = ctx

    # the helpers in _torch expect a Rule-like object
    qnames = Rule.qnames
    parent = Rule.parent
    ancestors = Rule.ancestors

    def _see(self, key: str) -> None:
        self.ctx.observations.setdefault(key, TEXT[key])

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf in _LOG_SPACE or is_method_call(self, node, {"logsumexp", "log_softmax"}):
            self._see("log-space")
        elif tf in _LIKE or is_method_call(self, node, _DEVICE_MATCHED_METHODS):
            self._see("device-matched")
        elif tf in _CHECKS or (dotted_name(node.func) or "").endswith(("assert_close", "gradcheck")):
            self._see("checks")
        if tf is not None:
            dev = kwarg(node, "device")
            if dev is not None and isinstance(dev.value, cst.Attribute) and dev.value.attr.value == "device":
                self._see("device-matched")

    def visit_With(self, node: cst.With) -> None:
        for item in node.items:
            call = item.item
            if isinstance(call, cst.Call) and torch_function(self, call) in _NO_GRAD:
                self._see("no-grad")

    def visit_Decorator(self, node: cst.Decorator) -> None:
        dec = node.decorator.func if isinstance(node.decorator, cst.Call) else node.decorator
        if any(q in ("torch.no_grad", "torch.inference_mode") for q in self.qnames(dec)):
            self._see("no-grad")

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        r = node.right
        if isinstance(r, cst.Attribute) and r.attr.value == "values":  # x.max(dim=-1).values
            r = r.value
        elif isinstance(r, cst.Subscript):  # x.max(dim=-1)[0]
            r = r.value
        if isinstance(node.operator, cst.Subtract) and isinstance(r, cst.Call):
            if torch_function(self, r) in ("max", "amax") or is_method_call(self, r, {"max", "amax"}):
                parent = self.parent(node)
                while isinstance(parent, (cst.Arg,)):
                    parent = self.parent(parent)
                if isinstance(parent, cst.Call) and (torch_function(self, parent) == "exp"
                                                     or is_method_call(self, parent, {"exp"})):
                    self._see("max-shift")

    def visit_Raise(self, node: cst.Raise) -> None:
        exc = node.exc.func if isinstance(node.exc, cst.Call) else node.exc
        if isinstance(exc, cst.Name) and exc.value in ("ValueError", "TypeError"):
            self._see("validation")
