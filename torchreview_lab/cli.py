"""``torchreview``: the review engine headless (CLI and CI).

    torchreview review PATH... [--standard research|production] [--format text|markdown|json|sarif]
                               [--fail-on SEVERITY] [--select CODES] [--ignore CODES] [--fix]
    torchreview rules [--format text|json]
    torchreview explain TR101
    torchreview scale FILE.py:FUNC --sizes 256,512,1024 --target 400000
    torchreview check FILE.py:FUNC

Exit codes: 0 ok; 1 a finding at or above --fail-on; 2 usage error or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__
from .findings import SEVERITIES, STANDARDS, severity_at_least

_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ipynb_checkpoints", ".tox", "build", "dist"}


class UsageError(Exception):
    pass


def _expand(paths: Sequence[str]) -> List[Path]:
    out: List[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
                out.extend(Path(root) / f for f in sorted(files) if f.endswith((".py", ".ipynb")))
        else:
            out.append(path)
    return out


def _codes(value: Optional[str]) -> List[str]:
    return [c.strip().upper() for c in value.split(",") if c.strip()] if value else []


def cmd_review(args) -> int:
    from .config import ConfigError, find_config
    from .engine import Review, review_document
    from .fixes import apply_fixes_to_file
    from .render import RENDERERS
    from .source import InputError, load_path

    files = _expand(args.paths)
    if not files:
        raise UsageError("no .py or .ipynb files found in " + ", ".join(args.paths))
    total: Optional[Review] = None
    errors = 0
    for path in files:
        try:
            cfg = find_config(path if path.exists() else Path.cwd())
            standard = args.standard or cfg.standard or "research"
            doc = load_path(path)
            review = review_document(doc, standard, cfg, select=_codes(args.select), ignore=_codes(args.ignore))
            if args.fix:
                n = apply_fixes_to_file(path, doc, review)
                if n:
                    print(f"{path}: applied {n} fix{'es' if n != 1 else ''}", file=sys.stderr)
                    doc = load_path(path)
                    review = review_document(doc, standard, cfg, select=_codes(args.select), ignore=_codes(args.ignore))
        except (FileNotFoundError, InputError, ConfigError) as exc:
            print(f"torchreview: error: {exc}", file=sys.stderr)
            errors += 1
            continue
        if total is None:
            total = review
        else:
            total.extend(review)
    if total is None:
        return 2
    print(RENDERERS[args.format](total))
    if errors:
        return 2
    if args.fail_on and any(severity_at_least(f.severity, args.fail_on) for f in total.findings):
        return 1
    return 0


def cmd_rules(args) -> int:
    from .rules import all_rules

    rules = all_rules()
    if args.format == "json":
        print(json.dumps([{
            "code": r.code, "title": r.title, "category": r.category,
            "severity": {s: r.severity_for(s) for s in STANDARDS}, "autofix": r.autofix,
        } for r in rules], indent=2))
        return 0
    width = max(len(r.title) for r in rules)
    print(f"{'code':6}  {'category':22}  {'research':8}  {'production':10}  {'fix':3}  title")
    for r in rules:
        print(f"{r.code:6}  {r.category:22}  {r.severity_for('research') or '-':8}  "
              f"{r.severity_for('production') or '-':10}  {'yes' if r.autofix else '':3}  {r.title}")
    print(f"{len(rules)} rules")
    return 0


def cmd_explain(args) -> int:
    from .docs import rule_markdown
    from .rules import get_rule

    try:
        rule = get_rule(args.code)
    except KeyError as exc:
        raise UsageError(str(exc).strip("'\"") + "; `torchreview rules` lists them") from exc
    print(rule_markdown(rule))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchreview", description="Review PyTorch code for correctness, scalability and production readiness.")
    p.add_argument("--version", action="version", version=f"torchreview {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("review", help="review .py and .ipynb files (directories are searched)")
    r.add_argument("paths", nargs="+", metavar="PATH")
    r.add_argument("--standard", choices=STANDARDS, default=None,
                   help="research: correctness, numerics, memory, devices, gradients; production: all of that plus error handling, validation, observability, docs, types (default: [tool.torchreview] standard or research)")
    r.add_argument("--format", choices=("text", "markdown", "json", "sarif"), default="text")
    r.add_argument("--fail-on", choices=SEVERITIES, default=None, help="exit 1 when a finding at or above this severity exists")
    r.add_argument("--select", help="comma-separated rule codes or prefixes to run (e.g. TR1,TR401)")
    r.add_argument("--ignore", help="comma-separated rule codes or prefixes to skip")
    r.add_argument("--fix", action="store_true", help="apply safe autofixes in place (notebooks keep outputs and metadata)")
    r.set_defaults(func=cmd_review)

    ru = sub.add_parser("rules", help="list the rules")
    ru.add_argument("--format", choices=("text", "json"), default="text")
    ru.set_defaults(func=cmd_rules)

    e = sub.add_parser("explain", help="print a rule's documentation")
    e.add_argument("code")
    e.set_defaults(func=cmd_explain)

    try:
        from .measure import cli as mcli
    except ImportError:  # the measuring layer needs torch; the static reviewer does not
        mcli = None
    if mcli is not None and all(hasattr(mcli, n) for n in ("add_scale_arguments", "run_scale", "add_check_arguments", "run_check")):
        s = sub.add_parser("scale", help="measure peak memory and time vs size T and extrapolate to a target")
        mcli.add_scale_arguments(s)
        s.set_defaults(func=mcli.run_scale)
        c = sub.add_parser("check", help="run runtime checks (devices, syncs, gradients, NaN/Inf, graph breaks, leaks)")
        mcli.add_check_arguments(c)
        c.set_defaults(func=mcli.run_check)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"torchreview: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `torchreview review ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
