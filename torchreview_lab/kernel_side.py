"""Code that runs *inside the user's kernel* on behalf of the server extension.

The server never executes user code itself: it sends one silent expression to the notebook's
kernel, e.g. ``__import__("torchreview_lab.kernel_side", fromlist=["_"]).run_probe(...)``. That
expression binds no names (``silent=True`` also skips ``_``/``Out``), so the user's namespace is left
as it was. Results travel back as lines on stdout, each ``MARK + json``; the server reads them from
the iopub stream of *its own* request (JupyterLab shows only outputs parented by a cell's request, so
nothing appears in the notebook).
"""
from __future__ import annotations

import inspect
import json
import linecache
import sys
import traceback
from typing import Any, Dict, List, Optional

MARK = "\x1eTORCHREVIEW "
_HARNESS_HINTS = ("harness", "probe", "bench", "scale", "run")
_SIZE_NAMES = ("t", "n", "size", "seq_len", "length", "seqlen", "t_len", "num", "steps", "tokens")


def _emit(event: str, **data: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, **data}, default=str) + "\n")
    sys.stdout.flush()


def _cell_source(filename: str) -> Optional[str]:
    lines = linecache.getlines(filename)
    return "".join(lines) if lines else None


def _site(code) -> Dict[str, Any]:
    return {"filename": code.co_filename, "line": code.co_firstlineno}


def _referenced_names(code) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _referenced_names(const)
    return names


def reachable_functions(fn, ns: Dict[str, Any], depth: int = 4) -> List[str]:
    """Names of the notebook's functions (and classes) ``fn`` calls, directly or through others:
    lets the panel offer "Measure scaling" on a finding inside a helper the harness reaches."""
    seen: set = set()
    frontier = [fn]
    for _ in range(depth):
        nxt = []
        for f in frontier:
            code = getattr(f, "__code__", None)
            if code is None:
                continue
            for name in _referenced_names(code):
                obj = ns.get(name)
                if name in seen or obj is None or getattr(obj, "__module__", None) != "__main__":
                    continue
                if inspect.isfunction(obj) or inspect.isclass(obj):
                    seen.add(name)
                    if inspect.isfunction(obj):
                        nxt.append(obj)
                    else:
                        nxt.extend(v for v in vars(obj).values() if inspect.isfunction(v))
                        seen.update(f"{name}.{k}" for k, v in vars(obj).items() if inspect.isfunction(v))
        frontier = nxt
    return sorted(seen)


def probeable(ns: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Functions defined in the notebook that can be called as ``f(T)``: one required positional
    parameter (any others have defaults), plus ``harness``-like names first."""
    out = []
    for name, obj in list(ns.items()):
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        if getattr(obj, "__module__", None) != "__main__":
            continue
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        params = list(sig.parameters.values())
        required = [p for p in params if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) != 1:
            continue
        code = obj.__code__
        out.append({
            "name": name,
            "signature": f"{name}{sig}",
            "parameter": required[0].name,
            "doc": (inspect.getdoc(obj) or "").split("\n", 1)[0],
            "harness": any(h in name.lower() for h in _HARNESS_HINTS),
            "size_like": required[0].name.lower() in _SIZE_NAMES,
            "site": _site(code),
            "calls": reachable_functions(obj, ns),
            "cell_source": _cell_source(code.co_filename),
        })
    out.sort(key=lambda d: (not d["harness"], not d["size_like"], d["name"]))
    return out


def list_functions(ns: Dict[str, Any]) -> None:
    _emit("functions", functions=probeable(ns))


def _frames(tb) -> List[Dict[str, Any]]:
    from .measure._frames import _skipped  # one definition of "user code" for probes and checks

    frames = []
    for fs in traceback.extract_tb(tb):
        if _skipped(fs.filename):
            continue
        frames.append({"filename": fs.filename, "line": fs.lineno, "name": fs.name, "text": fs.line,
                       "cell_source": _cell_source(fs.filename)})
    return frames


def run_probe(ns: Dict[str, Any], spec_json: str) -> None:
    """Run a scaling probe of ``ns[spec["function"]]`` and stream each measured point."""
    try:
        spec = json.loads(spec_json)
        name = spec["function"]
        fn = ns.get(name)
        if not callable(fn):
            _emit("error", kind="bad-function", message=f"{name!r} is not a function defined in this kernel")
            return
        import functools

        from .measure import scale

        raised: Dict[str, Any] = {}

        @functools.wraps(fn)
        def harness(*args, **kwargs):  # keeps the first traceback of the user's code for the report
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                import torch

                if not raised and torch.get_default_device().type != "meta":  # not the meta-device prediction
                    raised.update(kind="harness", message=f"{type(exc).__name__}: {exc}",
                                  frames=_frames(exc.__traceback__))
                raise

        def on_point(point) -> None:
            _emit("point", point={"size": point.size, "peak_bytes": point.peak_bytes, "seconds": point.seconds})

        budget = spec.get("budget_bytes")
        if budget is None and spec.get("budget_fraction"):  # the panel's memoryBudget setting as a fraction
            from .measure.probe import resolve_device
            from .measure.trackers import device_memory

            free = device_memory(resolve_device(spec.get("device", "auto"))).get("free")
            budget = int(free * float(spec["budget_fraction"])) if free else None
        kwargs = dict(sizes=spec.get("sizes") or [256, 512, 1024, 2048], target=spec.get("target"),
                      device=spec.get("device", "auto"), budget_bytes=budget,
                      time_budget=spec.get("time_budget"), backward=bool(spec.get("backward", False)), name=name,
                      # interactive: a meta run that loops over T in Python is given up on quickly
                      meta_time_limit=float(spec.get("meta_time_limit", 3.0)))
        params = inspect.signature(scale).parameters
        if "on_point" in params:
            kwargs["on_point"] = on_point
        if "progress" in params:  # silent: the panel shows the points, not a widget in the user's cell
            kwargs["progress"] = False
        result = scale(harness, **kwargs)
        data = result.to_json()
        data["harness_error"] = raised or None
        data["site"] = _site(fn.__code__) if hasattr(fn, "__code__") else None
        if data["site"]:
            data["site"]["cell_source"] = _cell_source(data["site"]["filename"])
        _emit("result", result=data)
        if spec.get("checks"):
            run_checks(fn, min(kwargs["sizes"]), kwargs["device"])
    except KeyboardInterrupt:
        _emit("cancelled", message="interrupted")
    except Exception as exc:  # noqa: BLE001 - reported to the server, never raised into the kernel
        _emit("error", kind="harness", message=f"{type(exc).__name__}: {exc}", frames=_frames(exc.__traceback__))


def run_checks(fn, size: int, device: str = "auto") -> None:
    """Runtime checks (devices, syncs, gradients, NaN/Inf, graph breaks, leaks) of the harness at a
    small size; each finding carries the source of the cell it points into, for the server to map."""
    from .measure import check

    result = check(fn, size=size, device=device)
    findings = []
    for f in result:
        d = f.to_json()
        d["cell_source"] = _cell_source(f.path)
        findings.append(d)
    _emit("checks", findings=findings, notes=list(result.notes))
