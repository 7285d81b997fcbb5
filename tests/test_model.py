"""The Finding model, its JSON Schema, and the generated rule reference."""
from __future__ import annotations

from pathlib import Path

import pytest

from torchreview_lab.docs import rules_reference
from torchreview_lab.engine import review_path
from torchreview_lab.findings import Finding, finding_json_schema, review_json_schema

ROOT = Path(__file__).resolve().parents[1]


def _validate(instance, schema):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(instance, schema)


def test_review_json_validates_against_schema():
    r = review_path(ROOT / "tests" / "fixtures" / "sample.ipynb", "production")
    assert r.findings
    _validate(r.to_json(), review_json_schema())


def test_finding_round_trip_and_bad_values():
    f = Finding(rule="TR101", category="memory-complexity", severity="high", title="t", path="a.py", line=3,
                fix={"before": "a", "after": "b"})
    assert Finding.from_json(f.to_json()) == f
    with pytest.raises(ValueError, match="category"):
        Finding(rule="TR101", category="memory", severity="high", title="t", path="a.py", line=1)
    with pytest.raises(ValueError, match="severity"):
        Finding(rule="TR101", category="scaling", severity="urgent", title="t", path="a.py", line=1)
    assert set(finding_json_schema()["required"]) == set(f.to_json())


def test_rules_reference_is_current():
    committed = (ROOT / "docs" / "rules.md").read_text()
    assert committed == rules_reference(), "docs/rules.md is stale: run `python -m torchreview_lab.docs > docs/rules.md`"
