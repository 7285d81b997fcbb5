"""TR013 NaN/Inf: the first op that produces a non-finite value that matters, traced to its origin.

A ``TorchDispatchMode`` checks ``isfinite(out).all()`` after each dense floating op (≈12 µs per op)
during one forward and one backward (the backward always runs: a forward Inf must not hide a backward
one). Each non-finite tensor's storage remembers its *origin*, the first op that made an Inf from
finite inputs; ops whose inputs already hold NaN/Inf only propagate it.

* A NaN is reported wherever it is made from NaN-free inputs (when an Inf turned into it, the report
  goes back to that Inf's origin).
* An Inf is reported only when it reaches the loss, the gradients (any Inf made in the backward), or
  a NaN; the finding names its origin.
* ``full``/``fill_``/``masked_fill(_)``/``new_full`` (and ``scalar_tensor``, ``where``, ``index_fill``)
  with an explicit ±inf value are masking: never an origin by themselves; such a mask is reported only
  when its Inf reaches the loss or turns into a NaN (a fully masked softmax row).

Backward ops are placed at the user's forward line of the op whose backward they run: a
``TorchFunctionMode`` maps each autograd node made in the forward to its line, and
``torch._C._current_autograd_node()`` names the node during backward ("backward of sqrt").
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...findings import Fix
from .._frames import user_site
from ..rules import make_finding
from ._base import CheckContext, describe
from ._sites import NodeSites, checkable, is_complex_result, loss_of, node_label

_SKIP = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "detach",
         "_local_scalar_dense", "lift_fresh", "alias", "_to_dense", "to_dense")
# ops that write an explicit value: with ±inf it is a mask, not an accident
_FILLS = {"full", "full_like", "new_full", "fill", "fill_", "masked_fill", "masked_fill_", "scalar_tensor",
          "where", "index_fill", "index_fill_"}
_LIMIT = 6  # reportable events before the check stops looking


def _stat(t: torch.Tensor):
    """(has NaN, has Inf) of a checkable tensor."""
    try:
        if bool(torch.isfinite(t).all()):
            return False, False
        return bool(torch.isnan(t).any()), bool(torch.isinf(t).any())
    except (RuntimeError, NotImplementedError, TypeError):
        return False, False


def _is_inf_scalar(a: Any) -> bool:
    if isinstance(a, float):
        return math.isinf(a)
    if isinstance(a, torch.Tensor) and a.dim() == 0 and (a.is_floating_point()) and a.device.type != "meta":
        try:
            return bool(torch.isinf(a))
        except RuntimeError:
            return False
    return False


def _explicit_inf(name: str, args, kwargs) -> bool:
    return name in _FILLS and any(_is_inf_scalar(a) for a in tree_flatten((args, kwargs))[0])


def _is_out(func, name: str) -> bool:
    return any(a.name == name and a.is_out for a in func._schema.arguments)


class _Origin:
    __slots__ = ("seq", "op", "site", "phase", "label", "kind", "nan", "inf", "numel")

    def __init__(self, seq, op, site, phase, label, kind, nan=0, inf=0, numel=0):
        self.seq, self.op, self.site, self.phase, self.label, self.kind = seq, op, site, phase, label, kind
        self.nan, self.inf, self.numel = nan, inf, numel

    @property
    def intentional(self) -> bool:  # a ±inf mask, or an Inf already in an input or constant
        return self.kind in ("mask", "external")


class _NonFinite(TorchDispatchMode):
    def __init__(self, nodes: NodeSites, fallback_site) -> None:
        super().__init__()
        self.nodes = nodes
        self.fallback = fallback_site
        self.phase = "forward"
        self.seq = 0
        self.storage: Dict[int, Any] = {}  # storage cdata -> (storage, origin): holds the storage alive
        self.events: List[Dict[str, Any]] = []
        self.reached = set()

    # -- where the current op is, in the user's code
    def _where(self):
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            site = self.nodes.site_of(node)
            return (site or self.fallback), (node_label(node) if node is not None else None)
        if self.phase == "loss":  # our own .sum() of the returned value
            return self.fallback, None
        return user_site() or self.fallback, None

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _origin_of(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return None
        hit = self.storage.get(st._cdata)
        return hit[1] if hit is not None else None

    def _remember(self, t: torch.Tensor, origin: _Origin) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return
        self.storage[st._cdata] = (st, origin)

    def _reach(self, origin: _Origin, how: str, op: str, site, label) -> None:
        key = (id(origin), how)
        if key in self.reached:
            return
        self.reached.add(key)
        self.events.append({"kind": "inf", "origin": origin, "how": how, "op": op, "site": site,
                            "label": label, "phase": self.phase, "seq": self._next()})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _SKIP or len(self.events) >= _LIMIT:
            return func(*args, **kwargs)
        mutable = func._schema.is_mutable
        # an out= buffer is written, not read (torch.empty garbage there must not count as an input)
        read = {k: v for k, v in kwargs.items() if not _is_out(func, k)} if mutable and kwargs else kwargs
        ins = [t for t in tree_flatten((args, read))[0] if checkable(t)]
        pre = [_stat(t) for t in ins] if mutable else None  # in-place: judge the inputs before the op
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if checkable(t)]
        ostats = [_stat(t) for t in outs]
        out_nan = any(s[0] for s in ostats)
        out_inf = any(s[1] for s in ostats)
        if not (out_nan or out_inf):
            return out
        istats = pre if mutable else [_stat(t) for t in ins]
        in_nan = any(s[0] for s in istats)
        in_inf = any(s[1] for s in istats)
        src = None
        for t, s in zip(ins, istats):
            if s[1]:
                o = self._origin_of(t)
                if o is not None and (src is None or o.seq < src.seq):
                    src = o
        site, label = self._where()
        bad = next(t for t, s in zip(outs, ostats) if s[0] or s[1])
        n_nan = int(torch.isnan(bad).sum())
        n_inf = int(torch.isinf(bad).sum())
        if in_inf and src is None:  # an Inf already in an input or a constant (torch.tensor(-inf))
            src = _Origin(self._next(), name, site, self.phase, label, "external")
        if out_inf:
            if in_inf or in_nan:
                origin = src
            else:
                kind = "mask" if _explicit_inf(name, args, kwargs) else "op"
                origin = _Origin(self._next(), name, site, self.phase, label, kind, n_nan, n_inf, bad.numel())
            if origin is not None:
                for t, s in zip(outs, ostats):
                    if s[1]:
                        self._remember(t, origin)
                if self.phase == "backward" and not origin.intentional:
                    self._reach(origin, "gradients", name, site, label)
        if out_nan and not in_nan:
            self.events.append({"kind": "nan", "op": name, "site": site, "label": label, "phase": self.phase,
                                "nan": n_nan, "inf": n_inf, "numel": bad.numel(),
                                "from_inf": src if in_inf else None, "seq": self._next()})
        return out


def check_nonfinite(ctx: CheckContext) -> list:
    nodes = NodeSites()
    mode = _NonFinite(nodes, ctx.location())
    out = loss = None
    try:
        with mode:
            with nodes:
                out = ctx.run()
            mode.phase = "loss"
            loss = loss_of(out)
            if loss is not None and is_complex_result(out):
                ctx.notes.append("TR013: the harness returned a complex tensor; backward ran from |out|.sum()")
            if loss is not None and checkable(loss):
                nan, inf = _stat(loss)
                if inf and not nan:
                    origin = mode._origin_of(loss) or _Origin(mode._next(), "loss", ctx.location(), "forward",
                                                               None, "external")
                    mode._reach(origin, "loss", "loss", ctx.location(), None)
            if loss is not None and loss.grad_fn is not None:
                mode.phase = "backward"
                try:
                    loss.backward()
                except RuntimeError as e:
                    if "second time" in str(e):
                        ctx.notes.append("TR013: the harness already ran backward (checked as part of its run)")
                    else:
                        ctx.notes.append(f"TR013: backward not checked: {str(e).strip().splitlines()[0][:160]}")
    finally:
        del out, loss
        nodes.clear()
        mode.storage.clear()
    return _findings(ctx, mode.events)


def _root(ev: Dict[str, Any]):
    """What an event is reported as: the Inf origin it came from (when that Inf was not a deliberate
    mask), else the event itself."""
    if ev["kind"] == "inf":
        return ev["origin"]
    src = ev["from_inf"]
    if src is not None and not src.intentional:
        return src
    return ev


def _seq(root) -> int:
    return root.seq if isinstance(root, _Origin) else root["seq"]


def _what(label: Optional[str], op: str) -> str:
    return f"backward of {label}" if label else op


def _findings(ctx: CheckContext, events: List[Dict[str, Any]]) -> list:
    groups: Dict[int, Any] = {}
    order: List[Any] = []
    for ev in events:
        root = _root(ev)
        key = id(root)
        if key not in groups:
            groups[key] = (root, [])
            order.append(key)
        groups[key][1].append(ev)
    ranked = sorted((groups[k] for k in order), key=lambda g: _seq(g[0]))
    if not ranked:
        return []
    by_site: Dict[Any, Any] = {}  # a forward op and its own backward (log(0), then 1/0) are one problem
    merged = []
    for root, evs in ranked:
        first = by_site.get(_site(root))
        if first is not None:
            first[1].extend(evs)
            continue
        by_site[_site(root)] = (root, evs)
        merged.append((root, evs))
    ranked = merged
    findings = [_finding(*ranked[0])]
    if len(ranked) > 1:
        ctx.notes.append("TR013: later non-finite origins: " + ", ".join(
            f"{_what(_label(r), _op(r))} at {describe(_site(r))}" for r, _ in ranked[1:]))
    return findings


def _label(r):
    return r.label if isinstance(r, _Origin) else r["label"]


def _op(r):
    return r.op if isinstance(r, _Origin) else r["op"]


def _site(r):
    return r.site if isinstance(r, _Origin) else r["site"]


def _reach_text(evs: List[Dict[str, Any]], root=None) -> str:
    parts = []
    for ev in evs:
        if ev["kind"] == "inf" and ev["how"] == "loss":
            parts.append("the loss")
        elif ev["kind"] == "inf" and root is not None and ev["site"] == _site(root):
            parts.append("the gradients")
        elif ev["kind"] == "inf":
            parts.append(f"the gradients ({_what(ev['label'], ev['op'])} at {describe(ev['site'])})")
        else:
            parts.append(f"a NaN in {_what(ev['label'], ev['op'])} at {describe(ev['site'])} ({ev['phase']})")
    seen, uniq = set(), []
    for p in parts:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return ", ".join(uniq[:3])


_FIX_FORWARD = Fix(before="torch.log(p)", after="torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))  "
                   "# or work in log space: torch.logsumexp / log_softmax")
_FIX_MASK = Fix(before="scores.masked_fill(mask, float('-inf'))",
                after="scores.masked_fill(mask, torch.finfo(scores.dtype).min)  "
                      "# or keep one unmasked entry in every row")


def _fix_backward(label: str) -> Fix:
    return Fix(before=f"torch.{label}(x)", after=f"torch.{label}(x.clamp_min(eps))  # keep the input away "
               "from the point where the derivative is infinite (sqrt/pow at 0, log at 0, acos at ±1)")


def _finding(root, evs: List[Dict[str, Any]]):
    if isinstance(root, _Origin) and not root.intentional:  # an accidental Inf that mattered
        what = _what(root.label, root.op)
        reach = _reach_text(evs, root)
        return make_finding(
            "TR013", f"{what} produces Inf from finite inputs ({root.phase})", root.site,
            problem=f"aten.{root.op}{' in the ' + what if root.label else ''} returned {root.inf} Inf "
                    f"(and {root.nan} NaN) values out of {root.numel:,} during the {root.phase} pass, although "
                    f"its inputs were finite; the Inf reaches {reach}.",
            impact="the loss and the gradients become NaN/Inf; training diverges silently",
            fix=_fix_backward(root.label) if root.label else _FIX_FORWARD,
            evidence={"op": root.op, "phase": root.phase, "nan": root.nan, "inf": root.inf, "numel": root.numel,
                      "backward_of": root.label, "reaches": reach})
    if isinstance(root, _Origin):  # a deliberate ±inf (mask) that reached the loss
        what = "mask" if root.kind == "mask" else "Inf already in an input"
        return make_finding(
            "TR013", f"The ±inf {what} written by {root.op} reaches the loss", root.site,
            problem=f"{root.op} writes ±inf on purpose (a mask), but the Inf is never absorbed (by a softmax or "
                    f"logsumexp over a row that keeps a finite entry): it reaches {_reach_text(evs)}.",
            impact="the loss is infinite and its gradients NaN; training diverges silently",
            fix=_FIX_MASK,
            evidence={"op": root.op, "phase": root.phase, "kind": root.kind, "reaches": _reach_text(evs)})
    ev = root
    what = _what(ev["label"], ev["op"])
    src = ev["from_inf"]
    if src is not None:
        title = f"{what} turns the ±inf mask from {src.op} into NaN ({ev['phase']})"
        problem = (f"aten.{ev['op']}{' in the ' + what if ev['label'] else ''} returned {ev['nan']} NaN values "
                   f"out of {ev['numel']:,} during the {ev['phase']} pass; its inputs held no NaN but the ±inf "
                   f"written by {src.op} at {describe(src.site)} (inf - inf, 0 * inf, or a fully masked row).")
        fix = _FIX_MASK
    else:
        title = f"{what} produces NaN from finite inputs ({ev['phase']})"
        problem = (f"aten.{ev['op']}{' in the ' + what if ev['label'] else ''} returned {ev['nan']} NaN and "
                   f"{ev['inf']} Inf values out of {ev['numel']:,} during the {ev['phase']} pass, although its "
                   "inputs were finite; everything downstream is poisoned.")
        fix = _fix_backward(ev["label"]) if ev["label"] else _FIX_FORWARD
    return make_finding(
        "TR013", title, ev["site"], problem=problem,
        impact="the loss and the gradients become NaN; training diverges silently", fix=fix,
        evidence={"op": ev["op"], "phase": ev["phase"], "nan": ev["nan"], "inf": ev["inf"],
                  "numel": ev["numel"], "backward_of": ev["label"]})
