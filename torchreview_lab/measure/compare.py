"""``compare(fn_a, fn_b, make_inputs, sizes=...)``: do two implementations agree?

For each size and seed, ``make_inputs(size)`` builds the inputs (a tuple, a dict of keyword
arguments, or one value; a dict ``size`` is passed as keyword arguments, e.g. ``{"T": 1, "K": 2}``),
each implementation gets its own identical copy, and the outputs are compared with
``torch.allclose`` (complex outputs as complex: real and imaginary parts; relative errors are
relative to ``fn_a``, the reference); when ``grads=True`` and the outputs carry a graph, the same
random cotangent is sent backward through both and the gradients of the floating inputs are compared
too. An implementation that writes into its inputs in place, or returns another dtype with the same
values (int32 for int64, float64 for float32), is reported as a note, not as a disagreement. Edge sizes (T=1, K=1, K=2) belong in ``sizes``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils._pytree import tree_flatten

from ..findings import Fix
from ._preserve import UserState
from ._frames import def_site
from .rules import make_finding

DEFAULT_SIZES = (1, 2, 3, 17)


@dataclass
class CompareCase:
    size: Any
    seed: int
    ok: bool
    what: str = ""                  # "outputs", "gradient of input 0", "error", ...
    max_abs_diff: Optional[float] = None   # outputs: the worst over the output tensors compared
    max_rel_diff: Optional[float] = None
    error: Optional[str] = None
    grad_abs_diff: Optional[float] = None  # input gradients: the worst over those compared (None: none)
    grad_rel_diff: Optional[float] = None
    notes: List[str] = field(default_factory=list)  # e.g. an implementation writes into its inputs

    def diff(self) -> Optional[float]:
        """The max |diff| of what this case is about (the failing gradient, else the outputs)."""
        return self.grad_abs_diff if self.what.startswith("gradient") else self.max_abs_diff


@dataclass
class CompareResult:
    fn_a: str
    fn_b: str
    cases: List[CompareCase] = field(default_factory=list)
    location: Optional[Dict[str, Any]] = None
    rtol: Optional[float] = None  # outputs; gradients are compared at 10x these
    atol: Optional[float] = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def notes(self) -> List[str]:
        """The cases' notes, each once (first seen first)."""
        return list(dict.fromkeys(n for c in self.cases for n in c.notes))

    @property
    def failures(self) -> List[CompareCase]:
        return [c for c in self.cases if not c.ok]

    def to_json(self) -> Dict[str, Any]:
        return {"fn_a": self.fn_a, "fn_b": self.fn_b, "ok": self.ok, "cases": [asdict(c) for c in self.cases],
                "location": self.location, "rtol": self.rtol, "atol": self.atol, "notes": self.notes}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "CompareResult":
        return cls(data["fn_a"], data["fn_b"], [CompareCase(**c) for c in data.get("cases", [])], data.get("location"),
                   data.get("rtol"), data.get("atol"))

    def findings(self) -> list:
        if self.ok:
            return []
        bad = self.failures
        first = bad[0]
        site = (self.location["path"], self.location["line"], self.fn_b) if self.location else None
        return [make_finding(
            "TR017", f"{self.fn_b} disagrees with {self.fn_a} ({len(bad)} of {len(self.cases)} cases)", site,
            problem=f"first disagreement at size {first.size!r} (seed {first.seed}) in {first.what}"
                    + (f": max |diff| {first.diff():.3g}" if first.diff() is not None else "")
                    + (f": {first.error}" if first.error else ""),
            impact="one of the implementations computes something else: wrong results or wrong gradients",
            fix=Fix(before="# the faster rewrite", after="# match the reference at the failing size, then re-run compare()"),
            evidence={"failures": [asdict(c) for c in bad[:10]], "cases": len(self.cases)})]

    def __str__(self) -> str:
        head = f"compare {self.fn_a} vs {self.fn_b}: " + (
            f"agree on all {len(self.cases)} cases" if self.ok else f"{len(self.failures)} of {len(self.cases)} cases disagree")
        lines = [head]
        for c in self.cases:
            if not c.ok:
                diff = f" max|diff| {c.diff():.3g}" if c.diff() is not None else ""
                lines.append(f"  size {c.size!r} seed {c.seed}: {c.what}{diff}{' ' + c.error if c.error else ''}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        """A table of the cases: size, seed, max abs/rel error of the outputs and of the input
        gradients, pass/fail (with what failed and why). All text is escaped."""
        from ._html import FAIL_COLOR, MUTED, PASS_COLOR, box, esc, marked, num, table, td

        n, bad = len(self.cases), len(self.failures)
        verdict = f"agree on all {n} case{'s' if n != 1 else ''}" if self.ok else f"{bad} of {n} cases disagree"
        head = (f"<b>compare <code>{esc(self.fn_a)}</code> (reference) vs <code>{esc(self.fn_b)}</code></b>: "
                f"<span style='color:{PASS_COLOR if self.ok else FAIL_COLOR};font-weight:600'>{esc(verdict)}</span>")
        if self.rtol is not None and self.atol is not None:
            head += (f" <span style='{MUTED}'>· rtol {num(self.rtol)}, atol {num(self.atol)} "
                     "(gradients: 10x)</span>")
        rows = []
        for c in self.cases:
            size = ", ".join(f"{k}={v}" for k, v in c.size.items()) if isinstance(c.size, dict) else str(c.size)
            detail = esc(c.what) + (f"<div style='{MUTED}'>{esc(c.error)}</div>" if c.error else "")
            rows.append("<tr>" + td(f"<code>{esc(size)}</code>") + td(esc(c.seed))
                        + "".join(td(esc(num(x)), "font-variant-numeric:tabular-nums")
                                  for x in (c.max_abs_diff, c.max_rel_diff, c.grad_abs_diff, c.grad_rel_diff))
                        + marked("pass" if c.ok else "fail", PASS_COLOR if c.ok else FAIL_COLOR) + td(detail) + "</tr>")
        body = table(["size", "seed", "outputs: max abs", "max rel", "gradients: max abs", "max rel", "result",
                      "compared"], rows) if rows else f"<div style='{MUTED}'>no cases</div>"
        notes = "".join(f"<div style='{MUTED}'>note: {esc(n)}</div>" for n in self.notes)
        return box(f"<div style='margin:2px 0 4px'>{head}</div>{body}{notes}")


def _call_make(make_inputs: Callable, size: Any):
    val = make_inputs(**size) if isinstance(size, dict) else make_inputs(size)
    if isinstance(val, dict):
        return (), dict(val)
    if isinstance(val, (tuple, list)):
        return tuple(val), {}
    return (val,), {}


def _copy(v: Any, grads: bool, leaves: List[torch.Tensor]) -> Any:
    """A fresh copy of the inputs for one implementation. With ``grads`` each floating (or complex)
    tensor becomes a leaf that requires grad (appended to ``leaves``) and the implementation gets
    ``leaf.clone()``: a tensor that carries the graph and that it may write into in place (a leaf that
    requires grad would raise). Without ``grads`` plain detached copies: nothing requires grad."""
    if isinstance(v, torch.Tensor):
        c = v.detach().clone()
        if grads and (c.is_floating_point() or c.is_complex()):
            leaves.append(c.requires_grad_(True))
            return c.clone()
        return c
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(_copy(x, grads, leaves) for x in v)
    if isinstance(v, tuple):  # a namedtuple
        return type(v)(*(_copy(x, grads, leaves) for x in v))
    if isinstance(v, dict):
        return {k: _copy(x, grads, leaves) for k, x in v.items()}
    return v


def _tensors(v: Any) -> List[torch.Tensor]:
    return [t for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor)]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float64, or complex128 for a complex tensor (never drops an imaginary part)."""
    t = t.detach()
    return t.to(torch.complex128) if t.is_complex() else t.to(torch.float64)


def _diff(a: torch.Tensor, b: torch.Tensor):
    """Max |a - b| and max |a - b| / |a| (relative to the reference ``a``); complex: the modulus of
    the complex difference. Equal infinities and NaN against NaN count as equal."""
    a64, b64 = _wide(a), _wide(b)
    if a64.is_complex() or b64.is_complex():
        a64, b64 = a64.to(torch.complex128), b64.to(torch.complex128)
    d = (a64 - b64).abs()
    both_inf = torch.isinf(a64) & torch.isinf(b64) & (a64 == b64)
    d = torch.where(both_inf | (torch.isnan(a64) & torch.isnan(b64)), torch.zeros_like(d), d)
    d = torch.nan_to_num(d, nan=math.inf)
    if not d.numel():
        return 0.0, 0.0
    mx = float(d.max())
    ref = torch.nan_to_num(a64.abs(), nan=0.0, posinf=math.inf)
    rel = torch.where(d == 0, torch.zeros_like(d), d / ref.clamp_min(1e-12))
    return mx, float(rel.max())


def _close(a, b, rtol, atol):
    if a.shape != b.shape:
        return False, f"shape {list(a.shape)} vs {list(b.shape)}", None, None
    if a.is_complex() != b.is_complex():
        return False, f"dtype {str(a.dtype).replace('torch.', '')} vs {str(b.dtype).replace('torch.', '')}", None, None
    if not (a.is_floating_point() or a.is_complex()) or not (b.is_floating_point() or b.is_complex()):
        common = torch.promote_types(a.dtype, b.dtype)
        eq = bool(torch.equal(a.to(common), b.to(common)))
        return eq, "" if eq else "integer values differ", None, None
    ok = bool(torch.allclose(_wide(a), _wide(b), rtol=rtol, atol=atol, equal_nan=True))
    mx, rel = _diff(a, b)
    return ok, "", mx, rel


def compare(fn_a: Callable, fn_b: Callable, make_inputs: Callable, sizes: Sequence[Any] = DEFAULT_SIZES,
            seeds: Sequence[int] = (0, 1), rtol: float = 1e-4, atol: float = 1e-5,
            grads: bool = True) -> CompareResult:
    """Check that ``fn_b`` agrees with ``fn_a`` (the reference) on outputs and input gradients."""
    res = CompareResult(getattr(fn_a, "__qualname__", repr(fn_a)), getattr(fn_b, "__qualname__", repr(fn_b)),
                        rtol=rtol, atol=atol)
    site = def_site(fn_b)
    res.location = {"path": site[0], "line": site[1]} if site else None
    # modules and leaf tensors the implementations reach get their gradients, modes and buffers back
    with UserState(fn_a, fn_b, make_inputs) as state:
        for size in sizes:
            for seed in seeds:
                state.clear()
                with torch.random.fork_rng(devices=[]), state.watching():
                    torch.manual_seed(seed)
                    try:
                        args, kwargs = _call_make(make_inputs, size)
                    except Exception as e:
                        res.cases.append(CompareCase(size, seed, False, "make_inputs", error=f"{type(e).__name__}: {e}"))
                        continue
                    res.cases.append(_one(fn_a, fn_b, args, kwargs, size, seed, rtol, atol, grads))
    return res


def _name(fn: Callable, tag: str) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or tag


def _one(fn_a, fn_b, args, kwargs, size, seed, rtol, atol, grads) -> CompareCase:
    leaves_a: List[torch.Tensor] = []
    leaves_b: List[torch.Tensor] = []
    ins_a, kw_a = _copy(args, grads, leaves_a), _copy(kwargs, grads, leaves_a)
    ins_b, kw_b = _copy(args, grads, leaves_b), _copy(kwargs, grads, leaves_b)
    outs, notes = [], []
    for fn, ins, kw, tag in ((fn_a, ins_a, kw_a, "a"), (fn_b, ins_b, kw_b, "b")):
        passed = _tensors((ins, kw))
        versions = [t._version for t in passed]
        try:
            outs.append(fn(*ins, **kw))
        except Exception as e:
            return CompareCase(size, seed, False, f"error in {tag}", error=f"{type(e).__name__}: {str(e)[:200]}",
                               notes=notes)
        changed = [i for i, (t, v) in enumerate(zip(passed, versions)) if t._version != v]
        if changed:
            name = _name(fn, tag)
            which = ", ".join(str(i) for i in changed)
            notes.append(f"{name} writes into its input tensor{'s' if len(changed) > 1 else ''} {which} in place "
                         "(each implementation got its own copy; a caller's tensor would change)")
    flat_a, flat_b = _tensors(outs[0]), _tensors(outs[1])
    if len(flat_a) != len(flat_b):
        return CompareCase(size, seed, False, "outputs", error=f"{len(flat_a)} vs {len(flat_b)} output tensors",
                           notes=notes)
    worst = (0.0, 0.0)
    for i, (a, b) in enumerate(zip(flat_a, flat_b)):
        ok, why, mx, rel = _close(a, b, rtol, atol)
        if not ok:
            return CompareCase(size, seed, False, f"output {i}" + (f" ({why})" if why else ""), mx, rel, notes=notes)
        if a.dtype != b.dtype:  # the values agree; a caller that relies on the dtype would still see a change
            notes.append(f"output {i}: dtype {str(a.dtype).replace('torch.', '')} from {_name(fn_a, 'a')} vs "
                         f"{str(b.dtype).replace('torch.', '')} from {_name(fn_b, 'b')} (the values agree)")
        if mx is not None:
            worst = (max(worst[0], mx), max(worst[1], rel))
    gworst = None
    if grads:
        pairs = [(a, b) for a, b in zip(flat_a, flat_b) if a.grad_fn is not None and b.grad_fn is not None]
        if pairs and leaves_a:
            gen = torch.Generator().manual_seed(1000 + seed)
            cots = [torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device) for a, _ in pairs]
            try:
                ga = torch.autograd.grad([a for a, _ in pairs], leaves_a, cots, allow_unused=True)
                gb = torch.autograd.grad([b for _, b in pairs], leaves_b, cots, allow_unused=True)
            except Exception as e:
                return CompareCase(size, seed, False, "backward", error=f"{type(e).__name__}: {str(e)[:200]}",
                                   notes=notes)
            for i, (x, y) in enumerate(zip(ga, gb)):
                if x is None and y is None:
                    continue
                x = torch.zeros_like(leaves_a[i]) if x is None else x
                y = torch.zeros_like(leaves_b[i]) if y is None else y
                ok, why, mx, rel = _close(x, y, rtol * 10, atol * 10)
                if not ok:
                    return CompareCase(size, seed, False, f"gradient of input {i}" + (f" ({why})" if why else ""),
                                       worst[0], worst[1], grad_abs_diff=mx, grad_rel_diff=rel, notes=notes)
                if mx is not None:
                    gworst = (mx, rel) if gworst is None else (max(gworst[0], mx), max(gworst[1], rel))
    return CompareCase(size, seed, True, "outputs and gradients" if gworst is not None else "outputs",
                       worst[0], worst[1], grad_abs_diff=gworst[0] if gworst else None,
                       grad_rel_diff=gworst[1] if gworst else None, notes=notes)
