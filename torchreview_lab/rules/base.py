"""The rule base class: one rule per file, self-documenting and self-testing.

A rule is a libcst ``BatchableCSTVisitor`` with a stable ``code``, a ``category`` from the
vocabulary, a ``severity`` per standard (None: the rule does not run under that standard), a
docstring with the sections *What it does / Why is this bad / Example / Use instead*, and ``VALID``
and ``INVALID`` code examples that the test-suite runs. All enabled rules visit one parsed module
together (``MetadataWrapper.visit_batched``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Union

import libcst as cst
from libcst.metadata import ParentNodeProvider, PositionProvider

from ..findings import CATEGORIES, STANDARDS, Fix, check_severity


@dataclass
class Invalid:
    """An INVALID example: ``code`` must trigger the rule (on ``line`` when given)."""

    code: str
    line: Optional[int] = None
    expected_fix: Optional[str] = None  # the module after the rule's autofix, when it has one


@dataclass
class Report:
    """What a rule reports; the engine turns it into a located, standard-filtered Finding."""

    rule: "Rule"
    node: cst.CSTNode
    problem: str
    impact: str
    fix: Optional[Fix] = None
    title: Optional[str] = None
    severity: Optional[str] = None  # overrides the rule's severity for this standard
    category: Optional[str] = None
    replacement: Optional[cst.CSTNode] = None  # a safe autofix: replace ``node`` by this
    evidence: Optional[Dict[str, Any]] = None


class NameTable:
    """Import aliases and bound names of one module, from a single ``ast`` pass.

    Scope-insensitive by design: an import anywhere in the module (notebooks import inside cells and
    functions alike) binds its alias everywhere, and a builtin counts as shadowed when the module
    binds that name anywhere."""

    def __init__(self, source: str) -> None:
        import ast
        import builtins

        self.aliases: Dict[str, str] = {}
        self.bound: set = set()
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError):
            tree = None
        if tree is not None:
            for n in ast.walk(tree):
                if isinstance(n, ast.Import):
                    for a in n.names:
                        if a.asname:
                            self.aliases[a.asname] = a.name
                        else:
                            head = a.name.split(".")[0]
                            self.aliases.setdefault(head, head)
                elif isinstance(n, ast.ImportFrom):
                    if n.level:
                        continue
                    for a in n.names:
                        if a.name != "*":
                            self.aliases[a.asname or a.name] = f"{n.module}.{a.name}"
                elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                    self.bound.add(n.id)
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.bound.add(n.name)
                elif isinstance(n, ast.arg):
                    self.bound.add(n.arg)
        self.builtins = set(dir(builtins)) - self.bound - set(self.aliases)
        self._cache: Dict[int, set] = {}

    def _dotted(self, node) -> Optional[str]:
        parts = []
        while isinstance(node, cst.Attribute):
            parts.append(node.attr.value)
            node = node.value
        if not isinstance(node, cst.Name):
            return None
        parts.append(node.value)
        return ".".join(reversed(parts))

    def resolve(self, node: cst.CSTNode) -> set:
        key = id(node)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out: set = set()
        dotted = self._dotted(node)
        if dotted:
            head, _, rest = dotted.partition(".")
            if head in self.aliases:
                target = self.aliases[head]
                out = {f"{target}.{rest}" if rest else target}
            elif head in self.builtins:
                out = {f"builtins.{dotted}"}
            elif head in self.bound:
                out = {dotted}
        self._cache[key] = out
        return out


@dataclass
class RuleContext:
    """Shared state for one review run (one module): reports, positive observations, caches."""

    standard: str = "research"
    module: Optional[cst.Module] = None
    source: str = ""
    _names: Optional[NameTable] = None
    reports: List[Report] = field(default_factory=list)
    observations: Dict[str, str] = field(default_factory=dict)
    cache: Dict[Any, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> NameTable:
        if self._names is None:
            self._names = NameTable(self.source or (self.module.code if self.module is not None else ""))
        return self._names

    def code_for(self, node: cst.CSTNode) -> str:
        mod = self.module or cst.Module(body=[])
        return mod.code_for_node(node)


class Rule(cst.BatchableCSTVisitor):
    code: ClassVar[str] = ""
    title: ClassVar[str] = ""
    category: ClassVar[str] = ""
    severity: ClassVar[Dict[str, Optional[str]]] = {}
    autofix: ClassVar[bool] = False
    VALID: ClassVar[Sequence[str]] = ()
    INVALID: ClassVar[Sequence[Union[str, Invalid]]] = ()

    # Qualified names come from one ``ast`` pass over the module's imports (:class:`NameTable`),
    # not libcst's scope analysis, which cost more than all the rules together.
    METADATA_DEPENDENCIES = (PositionProvider, ParentNodeProvider)

    def __init__(self, ctx: RuleContext) -> None:
        super().__init__()
        self.ctx = ctx

    # -- class-level checks, run by the registry ------------------------------------------
    @classmethod
    def validate_class(cls) -> None:
        import re

        if not re.fullmatch(r"TR\d{3}", cls.code):
            raise TypeError(f"{cls.__name__}: code must look like TR123, got {cls.code!r}")
        if cls.category not in CATEGORIES:
            raise TypeError(f"{cls.__name__}: unknown category {cls.category!r}")
        if set(cls.severity) - set(STANDARDS):
            raise TypeError(f"{cls.__name__}: severity keys must be standards {STANDARDS}")
        for v in cls.severity.values():
            if v is not None:
                check_severity(v, f"{cls.__name__}.severity")
        if not any(cls.severity.get(s) for s in STANDARDS):
            raise TypeError(f"{cls.__name__}: runs under no standard")
        if not cls.title:
            raise TypeError(f"{cls.__name__}: missing title")
        doc = cls.__doc__ or ""
        for section in ("What it does", "Why is this bad", "Example", "Use instead"):
            if section not in doc:
                raise TypeError(f"{cls.__name__}: docstring lacks the section {section!r}")
        if not cls.VALID or not cls.INVALID:
            raise TypeError(f"{cls.__name__}: needs VALID and INVALID examples")

    @classmethod
    def severity_for(cls, standard: str) -> Optional[str]:
        return cls.severity.get(standard)

    @classmethod
    def invalid_examples(cls) -> List[Invalid]:
        return [e if isinstance(e, Invalid) else Invalid(code=e) for e in cls.INVALID]

    # -- helpers for subclasses ------------------------------------------------------------
    def report(
        self,
        node: cst.CSTNode,
        problem: str,
        impact: str,
        fix: Optional[Fix] = None,
        *,
        title: Optional[str] = None,
        severity: Optional[str] = None,
        category: Optional[str] = None,
        replacement: Optional[cst.CSTNode] = None,
        evidence: Optional[Dict[str, Any]] = None,
    ) -> None:
        if replacement is not None and fix is None:
            fix = Fix(before=self.ctx.code_for(node), after=self.ctx.code_for(replacement))
        self.ctx.reports.append(
            Report(self, node, problem, impact, fix, title, severity, category, replacement, evidence)
        )

    def observe(self, key: str, text: str) -> None:
        """Record a well-implemented pattern for the report's Positive Observations."""
        self.ctx.observations.setdefault(key, text)

    def qnames(self, node: cst.CSTNode) -> set:
        """Qualified names of a Name/Attribute: ``{"torch.zeros"}`` for ``th.zeros`` after
        ``import torch as th`` or for ``zeros`` after ``from torch import zeros``; ``{"builtins.print"}``
        for an unshadowed builtin; the dotted name itself for local names; empty when unknown."""
        return self.ctx.names.resolve(node)

    def parent(self, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        return self.get_metadata(ParentNodeProvider, node, None)

    def ancestors(self, node: cst.CSTNode):
        p = self.parent(node)
        while p is not None:
            yield p
            p = self.parent(p)

    def line_of(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def where(self, node: cst.CSTNode) -> str:
        """``line N`` for a message: N counted within the notebook cell (the combined module's line
        would mean nothing to the reader), or the file's line for a script."""
        import bisect

        line, starts = self.line_of(node), self.ctx.options.get("cell_starts") or []
        i = bisect.bisect_right(starts, line) - 1
        return f"line {line - starts[i] + 1 if self.ctx.options.get('kind') == 'notebook' and i >= 0 else line}"

    def end_line_of(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).end.line

    def code_for(self, node: cst.CSTNode) -> str:
        return self.ctx.code_for(node)
