"""The static review engine.

One libcst parse of the whole document (cells concatenated in order, so names, imports and helper
functions resolve across cells), all enabled rules in one batched visit, then every report is
mapped back to its cell and line, filtered by suppressions and the standard, and de-duplicated.
Cells that do not parse yield one TR001 finding each and are left out of the combined module, so
the other cells are still reviewed.
"""
from __future__ import annotations

import ast
import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from .config import Config, find_config
from .findings import Finding, Fix, STANDARDS, check_standard, summarize
from .rules import all_rules, broken_modules, select_rules
from .rules._observations import Observer
from .rules._torch import clear_caches
from .rules.base import Report, RuleContext
from .source import (
    Cell,
    InputError,
    SourceDocument,
    from_cells,
    from_python,
    load_path,
)

__all__ = ["Review", "InputError", "review_document", "review_path", "review_cells", "review_source", "review_paths"]

_SUPPRESS = re.compile(r"#\s*torchreview:\s*(ignore-cell|ignore)(?:\[([^\]]*)\])?", re.I)


@dataclass
class Review:
    findings: List[Finding]
    standard: str
    documents: List[SourceDocument] = field(default_factory=list)
    observations: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # warnings for the user (unknown codes, skipped cells)

    def to_json(self) -> Dict[str, Any]:
        return {
            "findings": [f.to_json() for f in self.findings],
            "summary": summarize(self.findings, files=len(self.documents), standard=self.standard),
            "observations": list(self.observations),
            "errors": list(self.errors),
        }

    def extend(self, other: "Review") -> None:
        self.findings.extend(other.findings)
        self.documents.extend(other.documents)
        for o in other.observations:
            if o not in self.observations:
                self.observations.append(o)
        self.errors.extend(other.errors)
        self.findings.sort(key=Finding.sort_key)


@dataclass
class _Span:
    cell: Cell
    start: int  # first line of the cell in the combined module (1-based)
    nlines: int


def _syntax_error(code: str) -> Optional[SyntaxError]:
    try:
        compile(code, "<cell>", "exec", flags=ast.PyCF_ONLY_AST | getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0),
                dont_inherit=True)
    except SyntaxError as exc:
        return exc
    except (ValueError, RecursionError) as exc:  # null bytes, absurd nesting
        err = SyntaxError(str(exc))
        err.lineno = 1
        return err
    return None


def _normalise(code: str) -> str:
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    return code if code.endswith("\n") else code + "\n"


class _Located:
    """Maps combined-module lines to (cell, line within the cell)."""

    def __init__(self, spans: List[_Span]):
        self.spans = spans
        self.starts = [s.start for s in spans]

    def locate(self, line: int) -> Tuple[_Span, int]:
        i = bisect.bisect_right(self.starts, line) - 1
        span = self.spans[max(i, 0)]
        return span, line - span.start + 1


def _suppressions(cell: Cell) -> Tuple[Dict[int, Optional[set]], Optional[set], List[str]]:
    """Per-line suppressions (line -> codes or None for all), cell-wide codes, and code lists seen."""
    per_line: Dict[int, Optional[set]] = {}
    cell_codes: Optional[set] = None
    mentioned: List[str] = []
    for i, text in enumerate(cell.source.splitlines(), start=1):
        if "torchreview" not in text:
            continue
        for m in _SUPPRESS.finditer(text):
            kind, codes = m.group(1).lower(), m.group(2)
            parsed = {c.strip().upper() for c in codes.split(",") if c.strip()} if codes else None
            if parsed:
                mentioned.extend(parsed)
            if kind == "ignore-cell":
                cell_codes = (cell_codes or set()) | (parsed or {"*"})
            else:
                prev = per_line.get(i, set())
                per_line[i] = None if parsed is None or prev is None else prev | parsed
    return per_line, cell_codes, mentioned


def _is_suppressed(code: str, line: int, sup) -> bool:
    per_line, cell_codes, _ = sup
    if cell_codes and ("*" in cell_codes or any(code.startswith(c) for c in cell_codes)):
        return True
    if line in per_line:
        codes = per_line[line]
        return codes is None or any(code.startswith(c) for c in codes)
    return False


def _resolve_severity(report: Report, standard: str, overrides: Dict[str, str]) -> Optional[str]:
    code = report.rule.code
    if code in overrides:
        return overrides[code]
    sev = report.severity
    if isinstance(sev, dict):
        sev = sev.get(standard)
    base = report.rule.severity_for(standard)
    if base is None:
        return None
    return sev or base


def _visit(module: cst.Module, source: str, rules: list, ctx: RuleContext, review: "Review",
           doc: SourceDocument) -> Tuple[RuleContext, MetadataWrapper]:
    """All rules in one batched visit. A rule that raises (a bug of ours on code it did not expect, a
    recursion too deep) is named in ``review.errors`` and left out, and the visit runs again with the
    others on a fresh context, so one rule never costs the document its other findings."""
    options = dict(ctx.options)
    while True:
        ctx = RuleContext(standard=ctx.standard, options=options)
        ctx.module, ctx.source = module, source
        wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        visitors = [cls(ctx) for cls in rules] + [Observer(ctx)]
        try:
            wrapper.visit_batched(visitors)
            return ctx, wrapper
        except Exception as exc:  # noqa: BLE001 - reported below, the review goes on
            culprit = _failing_visitor(exc, visitors)
            what = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            if culprit is None or isinstance(culprit, Observer):
                review.errors.append(f"{doc.path}: the review failed ({what}); no findings for this document")
                ctx.reports.clear()
                return ctx, wrapper
            review.errors.append(f"{doc.path}: rule {culprit.code} failed ({what}) and was skipped for this document; "
                                 "the other rules ran")
            rules = [r for r in rules if r is not type(culprit)]
        finally:
            clear_caches()


def _failing_visitor(exc: BaseException, visitors: list) -> Any:
    """The visitor whose method raised: the innermost traceback frame whose ``self`` is one of them."""
    ids = {id(v): v for v in visitors}
    tb, found = exc.__traceback__, None
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if id(me) in ids and ids[id(me)] is me:
            found = me
        tb = tb.tb_next
    return found


def review_document(
    doc: SourceDocument,
    standard: str = "research",
    config: Optional[Config] = None,
    select: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
) -> Review:
    """Review one parsed document under ``standard``."""
    standard = check_standard(standard)
    config = config or Config()
    ignore_all = list(ignore or []) + config.ignores_for(doc.path)
    select_all = list(select or []) + list(config.select)
    rules = select_rules(standard, select=select_all or None, ignore=ignore_all or None)
    known = {r.code for r in all_rules()}
    review = Review(findings=[], standard=standard, documents=[doc])
    for mod, err in broken_modules().items():
        review.errors.append(f"rule module {mod} failed to load and did not run: {err}")

    for cell in doc.cells:
        if cell.skipped_reason:
            review.errors.append(f"{_cell_name(doc, cell)}: not reviewed: {cell.skipped_reason}")

    # 1. syntax check per cell; build the combined module from the cells that parse.
    spans: List[_Span] = []
    parts: List[str] = []
    line = 1
    syntax_findings: List[Finding] = []
    for cell in doc.code_cells:
        code = _normalise(cell.code)
        err = _syntax_error(code)
        if err is not None:
            syntax_findings.append(_syntax_finding(doc, cell, err, standard))
            continue
        n = code.count("\n")
        spans.append(_Span(cell, line, n))
        parts.append(code)
        line += n

    ctx = RuleContext(standard=standard, options={"kind": doc.kind, "path": doc.path,
                                                  "duration_convention": config.duration_convention,
                                                  # first line of each code cell in the combined module
                                                  "cell_starts": [s.start for s in spans]})
    if spans:
        module = _parse_combined(parts, spans, doc, syntax_findings, standard)
        if module is not None:
            ctx, wrapper = _visit(module, "".join(parts), list(rules), ctx, review, doc)
            positions = wrapper.resolve(PositionProvider)
            parents = wrapper.resolve(ParentNodeProvider)
            review.findings.extend(_to_findings(doc, spans, ctx, positions, parents, standard, config))

    if "TR001" in {r.code for r in rules}:
        review.findings.extend(syntax_findings)

    # 2. suppressions
    sups = {id(c): _suppressions(c) for c in doc.code_cells}
    kept = []
    for f in review.findings:
        cell = _cell_by_index(doc, f.cell)
        if cell is not None and _is_suppressed(f.rule, f.line, sups[id(cell)]):
            continue
        kept.append(f)
    for cell in doc.code_cells:
        for code in sups[id(cell)][2]:
            if not any(k.startswith(code) for k in known):
                review.errors.append(f"{_cell_name(doc, cell)}: suppression names unknown rule code {code}")

    # 3. de-duplicate (one finding per rule and line) and sort
    seen = set()
    out = []
    for f in sorted(kept, key=Finding.sort_key):
        key = (f.rule, f.path, f.cell, f.line)
        if key not in seen:
            seen.add(key)
            out.append(f)
    review.findings = out
    review.observations = list(ctx.observations.values())
    return review


def _cell_name(doc: SourceDocument, cell: Cell) -> str:
    return doc.path if cell.index is None else f"{doc.path} cell {cell.index + 1}"


def _cell_by_index(doc: SourceDocument, index: Optional[int]) -> Optional[Cell]:
    for c in doc.cells:
        if c.index == index:
            return c
    return None


def _syntax_finding(doc: SourceDocument, cell: Cell, err: SyntaxError, standard: str) -> Finding:
    from .rules.tr001_syntax_error import SyntaxErrorRule

    line = max(1, min(err.lineno or 1, max(1, cell.source.count("\n") + 1)))
    return Finding(
        rule=SyntaxErrorRule.code,
        category=SyntaxErrorRule.category,
        severity=SyntaxErrorRule.severity_for(standard) or "high",
        title=SyntaxErrorRule.title,
        path=doc.path,
        line=line,
        column=max(1, err.offset or 1),
        cell=cell.index,
        cell_id=cell.cell_id,
        execution_count=cell.execution_count,
        problem=f"This {'cell' if cell.index is not None else 'file'} does not parse: {err.msg}.",
        impact="It raises SyntaxError when run, and the reviewer cannot analyse it; the other cells are still reviewed.",
        standards=[s for s in STANDARDS if SyntaxErrorRule.severity_for(s)],
    )


def _parse_combined(parts, spans, doc, syntax_findings, standard) -> Optional[cst.Module]:
    try:
        return cst.parse_module("".join(parts))
    except cst.ParserSyntaxError:
        pass
    # libcst rejects something Python accepts (or vice versa): find the cells it cannot parse.
    good_parts = []
    for span, code in list(zip(spans, parts)):
        try:
            cst.parse_module(code)
            good_parts.append(code)
        except cst.ParserSyntaxError as exc:
            err = SyntaxError(str(exc).splitlines()[0] if str(exc) else "unsupported syntax")
            err.lineno, err.offset = exc.raw_line, exc.raw_column + 1
            syntax_findings.append(_syntax_finding(doc, span.cell, err, standard))
            good_parts.append("\n" * span.nlines)  # keep the line map
    try:
        return cst.parse_module("".join(good_parts))
    except cst.ParserSyntaxError:
        return None


def _enclosing_function(node, parents) -> Optional[str]:
    """Dotted name of the function a node sits in (``Model.forward``), for probes and reports."""
    names = []
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (cst.FunctionDef, cst.ClassDef)):
            names.append(p.name.value)
        p = parents.get(p)
    if not names or isinstance(node, cst.ClassDef):
        return None
    return ".".join(reversed(names))


def _to_findings(doc, spans, ctx: RuleContext, positions, parents, standard: str, config: Config) -> Iterable[Finding]:
    loc = _Located(spans)
    for rep in ctx.reports:
        sev = _resolve_severity(rep, standard, config.severity)
        if sev is None:
            continue
        pos = positions.get(rep.node)
        if pos is None:
            continue
        span, line = loc.locate(pos.start.line)
        end_span, end_line = loc.locate(pos.end.line)
        if end_span is not span:
            end_line = span.nlines
        rule = rep.rule
        evidence = dict(rep.evidence or {})
        fn = _enclosing_function(rep.node, parents)
        if fn:
            evidence.setdefault("function", fn)
        yield Finding(
            rule=rule.code,
            category=rep.category or rule.category,
            severity=sev,
            title=rep.title or rule.title,
            path=doc.path,
            line=line,
            column=pos.start.column + 1,
            end_line=end_line,
            end_column=pos.end.column + 1,
            cell=span.cell.index,
            cell_id=span.cell.cell_id,
            execution_count=span.cell.execution_count,
            problem=rep.problem,
            impact=rep.impact,
            fix=rep.fix,
            autofix=rep.replacement is not None,
            evidence=evidence or None,
            standards=[s for s in STANDARDS if rule.severity_for(s)],
        )


# -- entry points ---------------------------------------------------------------------------

def _config_for(path: Optional[str], config: Optional[Config]) -> Config:
    if config is not None:
        return config
    if path:
        try:
            p = Path(path)
            if p.exists():
                return find_config(p)
        except OSError:
            pass
    return Config()


def _standard(standard: Optional[str], cfg: Config) -> str:
    return check_standard(standard or cfg.standard or "research")


def review_path(path, standard: Optional[str] = None, config: Optional[Config] = None, **kw) -> Review:
    """Review a .py or .ipynb file. Raises FileNotFoundError / InputError naming the file."""
    doc = load_path(path)
    cfg = _config_for(str(path), config)
    return review_document(doc, _standard(standard, cfg), cfg, **kw)


def review_paths(paths: Sequence, standard: Optional[str] = None, config: Optional[Config] = None, **kw) -> Review:
    total: Optional[Review] = None
    for p in paths:
        r = review_path(p, standard, config, **kw)
        if total is None:
            total = r
        else:
            total.extend(r)
    return total or Review(findings=[], standard=check_standard(standard or "research"))


def review_cells(cells: Any, path: str, standard: Optional[str] = "research", language: Optional[str] = None,
                 config: Optional[Config] = None, **kw) -> Review:
    """Review live notebook content: nbformat-style cell dicts (``cell_type``, ``source``, ``id``)."""
    doc = from_cells(cells, path, language)
    cfg = config or Config()
    return review_document(doc, _standard(standard, cfg), cfg, **kw)


def review_source(code: str, path: str = "<string>.py", standard: Optional[str] = "research",
                  config: Optional[Config] = None, **kw) -> Review:
    """Review Python source text."""
    cfg = config or Config()
    return review_document(from_python(code, path), _standard(standard, cfg), cfg, **kw)
