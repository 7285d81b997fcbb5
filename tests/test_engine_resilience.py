"""A rule that raises on code it did not expect costs only its own findings: the document's other rules
still report, and the error names the rule and the document."""
from __future__ import annotations

import textwrap

from torchreview_lab.engine import review_source
from torchreview_lab.rules._observations import Observer
from torchreview_lab.rules.tr204_log_of_softmax import LogOfSoftmax

CODE = textwrap.dedent("""
    import torch
    def f(x, out=[]):
        p = torch.log(torch.softmax(x, dim=-1))
        out.append(p)
        return out
""")


def test_a_failing_rule_is_skipped_and_named_while_the_others_report(monkeypatch):
    assert {f.rule for f in review_source(CODE, "cell.py", "research").findings} == {"TR204", "TR805"}

    def visit_Call(self, node):
        raise ValueError("unexpected node")

    monkeypatch.setattr(LogOfSoftmax, "visit_Call", visit_Call)
    review = review_source(CODE, "cell.py", "research")
    assert [f.rule for f in review.findings] == ["TR805"]
    assert review.errors == ["cell.py: rule TR204 failed (ValueError: unexpected node) and was skipped for this "
                             "document; the other rules ran"]


def test_names_bound_to_each_other_do_not_recurse_forever():
    """TR901 followed ``b = a; a = b`` back and forth until a RecursionError ended the whole review."""
    code = "def f(a, e, l):\n    b = a\n    a = b\n    return a.marginals(e, l)\n"
    review = review_source(code, "cell.py", "research", select=["TR901"])
    assert not review.errors and not review.findings


def test_a_failure_outside_the_rules_is_reported_not_raised(monkeypatch):
    def visit_Call(self, node):  # libcst finds visitors by their __name__
        raise RuntimeError("observer")

    monkeypatch.setattr(Observer, "visit_Call", visit_Call)
    review = review_source(CODE, "cell.py", "research")
    assert review.findings == []
    assert review.errors == ["cell.py: the review failed (RuntimeError: observer); no findings for this document"]
