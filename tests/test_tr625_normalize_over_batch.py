"""TR625: embeddings normalised over the batch (dim 0) instead of over their features."""
from __future__ import annotations

import textwrap

from torchreview_lab.engine import review_source

CLIP = """
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Heads(nn.Module):
        def __init__(self, d_img, d_txt, d):
            super().__init__()
            self.img = nn.Sequential(nn.LayerNorm(d_img), nn.Linear(d_img, d))
            self.txt = nn.Linear(d_txt, d)
            self.proto = nn.Parameter(torch.randn(d, 16))
            self.scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def encode_image(self, x):
            return F.normalize(self.img(x), dim=-1)

        def encode_text(self, x):
            z = self.txt(x)
            return F.normalize(z, dim={DIM})

        def prototypes(self):
            return F.normalize(self.proto, dim=0)  # unit columns of a parameter: fine

        def forward(self, img, txt):
            return self.encode_image(img), self.encode_text(txt), self.scale.exp()
"""


def _lines(code):
    return [f.line for f in review_source(textwrap.dedent(code), "m.py", "research", select=["TR625"]).findings]


def test_text_head_normalised_over_the_batch_is_flagged_and_features_are_quiet():
    assert _lines(CLIP.replace("{DIM}", "0")) == [20]
    assert _lines(CLIP.replace("{DIM}", "-1")) == []
    assert _lines(CLIP.replace("{DIM}", "1")) == []


def test_the_flagged_form_depends_on_the_batch():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    z = torch.randn(8, 4)
    assert not torch.allclose(F.normalize(z, dim=0)[:2], F.normalize(z[:2], dim=0))
    assert torch.allclose(F.normalize(z, dim=-1)[:2], F.normalize(z[:2], dim=-1))
