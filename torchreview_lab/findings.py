"""The one data model shared by the engine, the renderers, the CLI, the server and the panel.

A :class:`Finding` is plain data. ``finding_json_schema()`` exports its JSON Schema; the
TypeScript types of the panel are generated from that schema (``scripts/gen_ts_types.py``) and a
test checks the generated file is current, so the two sides cannot drift.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SEVERITIES = ("critical", "high", "medium", "low")
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
STANDARDS = ("research", "production")
CATEGORIES = (
    "algorithm-correctness",
    "numerical-stability",
    "type-safety",
    "memory-correctness",
    "memory-complexity",
    "compute-complexity",
    "scaling",
    "error-handling",
    "robustness",
    "observability",
    "api-design",
    "readability",
    "documentation",
    "testing",
    "device-handling",
    "gradient-flow",
    "performance-patterns",
)
SEVERITY_HEADINGS = {
    "critical": "Critical Issues",
    "high": "High Priority Issues",
    "medium": "Medium Priority Issues",
    "low": "Low Priority Issues",
}


def severity_at_least(severity: str, threshold: str) -> bool:
    """True when ``severity`` ranks at or above ``threshold``."""
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[threshold]


def check_severity(value: str, what: str = "severity") -> str:
    v = str(value).lower()
    if v not in SEVERITY_RANK:
        raise ValueError(f"{what} must be one of {', '.join(SEVERITIES)}; got {value!r}")
    return v


def check_standard(value: str, what: str = "standard") -> str:
    v = str(value).lower()
    if v not in STANDARDS:
        raise ValueError(f"{what} must be one of {', '.join(STANDARDS)}; got {value!r}")
    return v


@dataclass
class Fix:
    """A concrete before/after for the reviewer's report."""

    before: str
    after: str


@dataclass
class Finding:
    """One review finding at an exact location.

    ``cell`` is the 0-based index among *all* notebook cells (markdown included), as JupyterLab
    numbers them; it is None for ``.py`` files. ``line``/``column`` are 1-based and, for notebooks,
    relative to the cell.
    """

    rule: str
    category: str
    severity: str
    title: str
    path: str
    line: int
    column: int = 1
    end_line: Optional[int] = None
    end_column: Optional[int] = None
    cell: Optional[int] = None
    cell_id: Optional[str] = None
    execution_count: Optional[int] = None
    problem: str = ""
    impact: str = ""
    fix: Optional[Fix] = None
    autofix: bool = False
    evidence: Optional[Dict[str, Any]] = None
    standards: List[str] = field(default_factory=lambda: list(STANDARDS))

    def __post_init__(self) -> None:
        check_severity(self.severity)
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r} (rule {self.rule})")
        if isinstance(self.fix, dict):
            self.fix = Fix(**self.fix)

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.severity]

    def sort_key(self):
        return (-self.rank, self.path, self.cell if self.cell is not None else -1, self.line, self.column, self.rule)

    def location(self, with_count: bool = True) -> str:
        """Human location: ``file.py:12`` or ``nb.ipynb cell 4 [In 7], line 3`` (cell 1-based)."""
        if self.cell is None:
            return f"{self.path}:{self.line}"
        count = f" [In {self.execution_count}]" if with_count and self.execution_count is not None else ""
        return f"{self.path} cell {self.cell + 1}{count}, line {self.line}"

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Finding":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown finding fields: {sorted(unknown)}")
        return cls(**data)


def summarize(findings: List[Finding], files: int = 0, standard: str = "research") -> Dict[str, Any]:
    by_sev = {s: 0 for s in SEVERITIES}
    by_cat: Dict[str, int] = {}
    for f in findings:
        by_sev[f.severity] += 1
        by_cat[f.category] = by_cat.get(f.category, 0) + 1
    return {
        "total": len(findings),
        "by_severity": by_sev,
        "by_category": dict(sorted(by_cat.items())),
        "files": files,
        "standard": standard,
    }


_NULLABLE_INT = {"type": ["integer", "null"]}


def finding_json_schema() -> Dict[str, Any]:
    """JSON Schema (draft 2020-12) of one Finding, derived from the dataclass fields."""
    props: Dict[str, Any] = {
        "rule": {"type": "string", "pattern": "^TR[0-9]{3}$", "description": "stable rule code"},
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "title": {"type": "string"},
        "path": {"type": "string"},
        "line": {"type": "integer", "minimum": 1},
        "column": {"type": "integer", "minimum": 1},
        "end_line": _NULLABLE_INT,
        "end_column": _NULLABLE_INT,
        "cell": {"type": ["integer", "null"], "minimum": 0,
                 "description": "0-based index among all notebook cells; null for .py files"},
        "cell_id": {"type": ["string", "null"]},
        "execution_count": _NULLABLE_INT,
        "problem": {"type": "string"},
        "impact": {"type": "string"},
        "fix": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {"before": {"type": "string"}, "after": {"type": "string"}},
                    "required": ["before", "after"],
                    "additionalProperties": False,
                },
            ]
        },
        "autofix": {"type": "boolean"},
        "evidence": {"type": ["object", "null"]},
        "standards": {"type": "array", "items": {"type": "string", "enum": list(STANDARDS)}},
    }
    names = [f.name for f in dataclasses.fields(Finding)]
    missing = set(names) ^ set(props)
    if missing:  # the model and its schema are kept in one place; this guards edits
        raise AssertionError(f"schema out of step with Finding fields: {sorted(missing)}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://torchreview-lab/finding.schema.json",
        "title": "Finding",
        "type": "object",
        "properties": {n: props[n] for n in names},
        "required": names,
        "additionalProperties": False,
    }


def review_json_schema() -> Dict[str, Any]:
    """Schema of the whole JSON output: ``{"findings": [...], "summary": {...}}``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Review",
        "type": "object",
        "properties": {
            "findings": {"type": "array", "items": finding_json_schema()},
            "summary": {
                "type": "object",
                "properties": {
                    "total": {"type": "integer"},
                    "by_severity": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "by_category": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "files": {"type": "integer"},
                    "standard": {"type": "string", "enum": list(STANDARDS)},
                },
                "required": ["total", "by_severity", "by_category", "files", "standard"],
            },
            "observations": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["findings", "summary"],
    }
