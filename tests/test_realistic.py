"""Whole-file reviews of realistic research code (written here, in the style of public models):
the bugs a senior reviewer would flag are found at their lines, and nothing else is high."""
from __future__ import annotations

from pathlib import Path

from torchreview_lab.engine import review_path

HERE = Path(__file__).parent / "fixtures" / "realistic"


def found(review):
    return {(f.rule, f.line) for f in review.findings}


def test_semimarkov_crf_module():
    r = review_path(HERE / "semimarkov_crf.py", "research")
    got = found(r)
    assert ("TR101", 16) in got          # (batch, T, K, C, C) edge tensor filled in loops
    assert ("TR401", 16) in got          # ... on the default device
    assert ("TR401", 15) in got          # a CPU zeros pad concatenated with the emissions' cumsum
    assert ("TR201", 14) in got          # raw cumsum over T, then differenced
    assert ("TR601", 22) in got          # self.duration[k] with k up to self.K: rows 0..K-1
    assert ("TR203", 36) in got          # log(sum(exp(.))) instead of logsumexp
    assert not any(rule == "TR103" for rule, _ in got)  # the stacked list is per-duration, reset per t
    high = {(f.rule, f.line) for f in r.findings if f.severity in ("high", "critical")}
    assert high <= {("TR101", 16), ("TR401", 15), ("TR401", 16), ("TR401", 28), ("TR601", 22), ("TR203", 36)}


def test_attention_training_script():
    r = review_path(HERE / "attention_train.py", "research")
    got = found(r)
    assert ("TR506", 26) in got          # transpose(1, 2).view(...) raises for these shapes
    assert ("TR151", 44) in got          # total += loss keeps every step's graph
    assert ("TR208", 24) in got          # -inf fill then softmax: NaN on fully masked rows
    high = {(f.rule, f.line) for f in r.findings if f.severity in ("high", "critical")}
    assert high == {("TR506", 26), ("TR151", 44)}


def test_cumsum_severity_follows_whether_prefix_sums_are_differenced():
    from torchreview_lab.engine import review_source

    across = ("import torch\n\n\ndef prefix(x):\n    cum = torch.cumsum(x, dim=1)\n"
              "    return torch.cat([torch.zeros_like(cum[:, :1]), cum], dim=1)\n\n\n"
              "def segment(cum, start, end):\n    return cum[:, end] - cum[:, start]\n")
    running = "import torch\n\n\ndef running_total(x):\n    return torch.cumsum(x, dim=1)\n"
    sev = lambda code: [(f.line, f.severity) for f in review_source(code).findings if f.rule == "TR201"]
    assert sev(across) == [(5, "medium")]
    assert sev(running) == [(5, "low")]


def test_periodic_logging_sync_is_low_every_step_sync_is_medium():
    from torchreview_lab.engine import review_source

    code = ("def fit(model, opt, data):\n    for step, x in enumerate(data):\n        opt.zero_grad()\n"
            "        loss = model(x).sum()\n        loss.backward()\n        opt.step()\n"
            "        if step % 100 == 0:\n            print(loss.item())\n        last = loss.item()\n")
    sev = {f.line: f.severity for f in review_source(code).findings if f.rule == "TR404"}
    assert sev == {8: "low", 9: "medium"}
