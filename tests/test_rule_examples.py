"""Every rule's VALID and INVALID examples are tests; the registry's invariants are tests too."""
from __future__ import annotations

import pytest

from torchreview_lab.engine import review_source
from torchreview_lab.findings import STANDARDS
from torchreview_lab.rules import all_rules, get_rule

RULES = all_rules()


def _standard_for(rule) -> str:
    return "production" if rule.severity_for("production") else "research"


def _cases(kind):
    for rule in RULES:
        examples = rule.VALID if kind == "valid" else rule.invalid_examples()
        for i, ex in enumerate(examples):
            yield pytest.param(rule, ex, id=f"{rule.code}-{kind}{i}")


@pytest.mark.parametrize("rule,code", list(_cases("valid")))
def test_valid_example_is_quiet(rule, code):
    for std in STANDARDS:
        if rule.severity_for(std) is None:
            continue
        found = [f for f in review_source(code, "example.py", std).findings if f.rule == rule.code]
        assert not found, f"{rule.code} fired on its VALID example under {std}: {[(f.line, f.problem) for f in found]}"


@pytest.mark.parametrize("rule,example", list(_cases("invalid")))
def test_invalid_example_fires(rule, example):
    std = _standard_for(rule)
    found = [f for f in review_source(example.code, "example.py", std).findings if f.rule == rule.code]
    assert found, f"{rule.code} did not fire on its INVALID example:\n{example.code}"
    if example.line is not None:
        assert example.line in [f.line for f in found], (rule.code, [f.line for f in found])
    for f in found:
        assert f.problem and f.impact, f"{rule.code}: a finding needs a problem and an impact"


def test_codes_unique_and_families():
    codes = [r.code for r in RULES]
    assert len(codes) == len(set(codes))
    assert get_rule(codes[0].lower()) is RULES[0]
    with pytest.raises(KeyError):
        get_rule("TR999999")


def _fix_cases():
    for rule in RULES:
        for i, ex in enumerate(rule.invalid_examples()):
            if ex.expected_fix is not None:
                yield pytest.param(rule, ex, id=f"{rule.code}-fix{i}")


@pytest.mark.parametrize("rule,example", list(_fix_cases()))
def test_autofix_produces_expected_code(rule, example):
    """The fix is applied as `torchreview review --fix` applies it (text edits on the source)."""
    from torchreview_lab.fixes import fixed_sources

    review = review_source(example.code, "example.py", _standard_for(rule), select=[rule.code])
    assert any(f.autofix for f in review.findings), f"{rule.code}: no autofix offered"
    assert fixed_sources(review.documents[0], review)[None] == example.expected_fix
    assert rule.autofix, f"{rule.code} has fix examples but does not declare autofix = True"


def test_every_rule_module_imports():
    from torchreview_lab.rules import broken_modules

    assert broken_modules() == {}
