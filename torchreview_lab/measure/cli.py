"""``torchreview scale`` and ``torchreview check``: argparse wiring the lead's CLI calls.

``add_scale_arguments(parser)`` / ``run_scale(args) -> int`` and ``add_check_arguments(parser)`` /
``run_check(args) -> int``. Exit codes: 0 done (and, with a target, it fits; for check, no finding
at or above ``--fail-on``), 1 the target does not fit / findings at or above ``--fail-on``, 2 bad
input (missing file or function, malformed spec, bad sizes) or nothing could be measured or checked
(no size measured; every selected check failed, stopped, was skipped or could not run).
``--make-inputs NAME`` is looked up in the module loaded for FUNC: the file is imported once.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import sys
from typing import Callable, List, Optional, Tuple


class SpecError(Exception):
    """Bad ``FILE.py:FUNC`` spec; the message names the file and the function."""


def parse_spec(spec: str) -> Tuple[str, str]:
    if not spec or ":" not in spec:
        raise SpecError(f"expected FILE.py:FUNCTION, got {spec!r}")
    path, _, func = spec.rpartition(":")
    if not path or not func or not func.replace(".", "_").isidentifier():
        raise SpecError(f"expected FILE.py:FUNCTION, got {spec!r}")
    return path, func


def load_function(spec: str) -> Tuple[Callable, str, str]:
    """Import ``FILE.py`` under a unique module name and return ``(function, path, name)``.

    The module is registered in ``sys.modules`` (dataclasses and pickling need it) under
    ``_torchreview_user_<hash>`` and its directory is put on ``sys.path`` while it loads.
    """
    module, path, func = _load_module(spec)
    try:
        return _lookup(module, path, func), path, func
    except SpecError:
        sys.modules.pop(module.__name__, None)
        raise


def load_functions(spec: str, *others: str) -> Tuple[Callable, str, str, List[Callable]]:
    """Like :func:`load_function`, and also return the functions named ``others`` from the same
    module: the file is imported once, so they all see the same module globals (a model built at
    import time is one object for all of them)."""
    module, path, func = _load_module(spec)
    try:
        return _lookup(module, path, func), path, func, [_lookup(module, path, o) for o in others]
    except SpecError:
        sys.modules.pop(module.__name__, None)
        raise


def _load_module(spec: str):
    path, func = parse_spec(spec)
    apath = os.path.abspath(path)
    if not os.path.isfile(apath):
        raise SpecError(f"no such file: {path} (from {spec!r})")
    name = "_torchreview_user_" + hashlib.sha1(apath.encode()).hexdigest()[:12]
    mod_spec = importlib.util.spec_from_file_location(name, apath)
    if mod_spec is None or mod_spec.loader is None:
        raise SpecError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    folder = os.path.dirname(apath)
    sys.path.insert(0, folder)
    try:
        mod_spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(name, None)
        raise SpecError(f"importing {path} called sys.exit({e.code})") from None
    except Exception as e:
        sys.modules.pop(name, None)
        raise SpecError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module, path, func


def _lookup(module, path: str, func: str) -> Callable:
    if not func or not func.replace(".", "_").isidentifier():
        raise SpecError(f"expected a function name in {path}, got {func!r}")
    obj = module
    for part in func.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{path} has no function {func!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{path}:{func} is not callable")
    return obj


def unload(fn: Callable) -> None:
    """Drop the module ``load_function`` registered (leave no globals behind)."""
    name = getattr(fn, "__module__", "") or ""
    if name.startswith("_torchreview_user_"):
        sys.modules.pop(name, None)


def _sizes(text: str) -> List[int]:
    try:
        out = [int(s.replace("_", "")) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise SpecError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not out or any(s <= 0 for s in out):
        raise SpecError(f"--sizes must be positive integers, got {text!r}")
    return out


def add_scale_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("spec", metavar="FILE.py:FUNC", help="the harness: FUNC(T) builds inputs of size T and runs")
    parser.add_argument("--sizes", default="256,512,1024,2048", help="comma-separated sizes T (default %(default)s)")
    parser.add_argument("--target", type=int, default=None, help="predict memory and time at this T")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--budget-bytes", type=int, default=None,
                        help="skip sizes predicted above this (default: half the free device memory)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop the grid after this many seconds")
    parser.add_argument("--backward", action="store_true", help="also run backward through the returned loss")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per size (median)")
    parser.add_argument("--no-meta", action="store_true", help="skip the meta-device prediction")
    parser.add_argument("--meta-time-limit", type=_positive_seconds, default=10.0, metavar="S",
                        help="seconds for the meta-device prediction at the target; a harness that loops "
                             "over T in Python gets a figure extrapolated from smaller meta runs when the "
                             "run at the target would take longer (default %(default)s)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def add_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("spec", metavar="FILE.py:FUNC", help="the harness: FUNC(T) returns the loss or output")
    parser.add_argument("--size", type=int, default=64, help="T for the checks (default %(default)s)")
    parser.add_argument("--checks", default=None,
                        help="comma-separated names or codes (device,syncs,grads,nonfinite,graph_breaks,leaks,"
                             "gradcheck / TR010-TR016); default all")
    parser.add_argument("--make-inputs", default=None, metavar="FUNC",
                        help="a function in the same file: make_inputs(T) returns the arguments of FUNC")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--fail-on", choices=("critical", "high", "medium", "low", "never"), default="high",
                        help="exit 1 when a finding is at or above this severity (default %(default)s)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _err(msg: str) -> int:
    print(f"torchreview: error: {msg}", file=sys.stderr)
    return 2


def run_scale(args: argparse.Namespace) -> int:
    from .probe import scale

    try:
        sizes = _sizes(args.sizes)
        fn, path, name = load_function(args.spec)
    except SpecError as e:
        return _err(str(e))
    try:
        res = scale(fn, sizes=sizes, target=args.target, device=args.device, budget_bytes=args.budget_bytes,
                    time_budget=args.time_budget, backward=getattr(args, "backward", False),
                    repeats=getattr(args, "repeats", 5), meta=not getattr(args, "no_meta", False),
                    meta_time_limit=getattr(args, "meta_time_limit", 10.0),
                    name=f"{path}:{name}", progress=False)  # the CLI prints its result, never a widget
    except ValueError as e:  # bad device and the like
        return _err(str(e))
    finally:
        unload(fn)
    if args.format == "json":
        print(json.dumps(res.to_json(), indent=2))
    else:
        print(res)
    if not res.points:
        return 2
    if res.target is not None and res.target.fits is False:
        return 1
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..findings import severity_at_least
    from .checks import check

    try:
        extra = [args.make_inputs] if getattr(args, "make_inputs", None) else []
        fn, path, name, others = load_functions(args.spec, *extra)  # one import for both
        make_inputs = others[0] if others else None
    except SpecError as e:
        return _err(str(e))
    try:
        res = check(fn, size=args.size, checks=args.checks, make_inputs=make_inputs, device=args.device)
    except ValueError as e:
        return _err(str(e))
    finally:
        unload(fn)
    res.function = f"{path}:{name}"
    if args.format == "json":
        print(json.dumps(res.to_json(), indent=2))
    else:
        print(res)
    fail_on = getattr(args, "fail_on", "high")
    if fail_on != "never" and any(severity_at_least(f.severity, fail_on) for f in res):
        return 1
    if not len(res) and _nothing_checked(res):
        print(f"torchreview: error: no check could run {path}:{name} (see the notes)", file=sys.stderr)
        return 2
    return 0


_CHECK_NOTE = re.compile(r"^(TR01\d) [\w-]+ check "
                         r"(?:failed|ran out of memory|stopped|could not run|skipped)\b")


def _nothing_checked(res) -> bool:
    """Every selected check ended in a note that it failed, stopped, was skipped or could not run
    (the harness raised, say): the run checked nothing, which must not read as "no findings".
    ``gradcheck`` is silent when the file defines no ``autograd.Function`` (it has nothing to run),
    so it decides only when it is the one check selected."""
    from .checks import CODES

    ran = list(getattr(res, "seconds", {}) or {})
    ended = {m.group(1) for m in (_CHECK_NOTE.match(n) for n in res.notes) if m}
    decisive = [name for name in ran if name != "gradcheck"] or ran
    return bool(decisive) and all(CODES.get(name) in ended for name in decisive)


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry (``python -m torchreview_lab.measure.cli scale|check ...``)."""
    parser = argparse.ArgumentParser(prog="torchreview-measure")
    sub = parser.add_subparsers(dest="command", required=True)
    add_scale_arguments(sub.add_parser("scale", help="memory and time against T"))
    add_check_arguments(sub.add_parser("check", help="runtime checks"))
    args = parser.parse_args(argv)
    return run_scale(args) if args.command == "scale" else run_check(args)


if __name__ == "__main__":
    sys.exit(main())
