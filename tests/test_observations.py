"""Positive observations: well-implemented patterns are acknowledged in the report."""
from __future__ import annotations

from torchreview_lab.engine import review_source
from torchreview_lab.render import render_markdown

GOOD = '''
import torch


def score(h, lengths):
    if h.dim() != 3:
        raise ValueError(f"h must be (batch, T, hidden), got {tuple(h.shape)}")
    logp = torch.log_softmax(h, dim=-1)
    positions = torch.arange(h.shape[1], device=h.device)
    centred = h - h.mean(dim=1, keepdim=True)
    prefix = torch.cumsum(centred, dim=1)
    return logp, positions[None, :] < lengths[:, None], prefix


def stable(x):
    return torch.exp(x - x.max(dim=-1, keepdim=True).values)


@torch.no_grad()
def evaluate(model, x):
    return model(x)
'''


def test_recognised_patterns_are_reported_once_each():
    review = review_source(GOOD, "good.py", "production")
    text = " ".join(review.observations)
    for phrase in ("logsumexp", "device=x.device", "zero-centred", "no_grad", "maximum", "validated"):
        assert phrase in text, (phrase, review.observations)
    assert len(review.observations) == len(set(review.observations))
    md = render_markdown(review)
    section = md.split("## Positive Observations")[1].split("## Recommendations")[0]
    assert section.count("\n- ") == len(review.observations)


def test_nothing_claimed_for_code_without_the_patterns():
    review = review_source("import torch\ndef f(x):\n    return torch.exp(x) / torch.exp(x).sum()\n", "bad.py")
    assert not any("maximum" in o or "logsumexp" in o for o in review.observations)
