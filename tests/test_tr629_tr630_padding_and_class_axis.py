"""TR629 (padding argument ignored), TR630 (log_softmax axis is not the loss's class axis) and TR607's
Poisson case (a positive rate read as a log-rate): the wrong forms fire on the line to change, the
correct spellings stay quiet."""
from __future__ import annotations

import textwrap

from torchreview_lab.engine import review_source

H = """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
"""


def _lines(code: str, rule: str):
    review = review_source(textwrap.dedent(code), "case.py", "research", select=[rule])
    return sorted(f.line for f in review.findings if f.rule == rule)


# -- TR629 -----------------------------------------------------------------------------------------
TR629 = H + """
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        def forward(self, x, key_padding_mask):
            out, _ = self.mha(x, x, x)                # line 11
            return out

    class Pool(nn.Module):
        def forward(self, x, attention_mask):
            return x.max(dim=1).values                # line 16

    def elementwise(a, b, mask):
        return torch.max(a, b)

    def loss(pred, target, mask):
        return F.mse_loss(pred, target)               # line 22

    def no_reduction(x, mask):
        return x * 2

    class Compat(nn.Module):
        def forward(self, x, mask):
            del mask
            return x.mean(1)

    class Optional_(nn.Module):
        def forward(self, x, src_key_padding_mask=None, lengths=None):
            return x.mean(1)

    class Abstract(nn.Module):
        def forward(self, x, lengths):
            \"\"\"Pool.\"\"\"
            ...

    def nested_reads(x, lengths):
        f = lambda: lengths
        return x.sum(1) / f()
"""


def test_tr629_flags_ignored_padding_at_the_reduction():
    assert _lines(TR629, "TR629") == [11, 16, 22]


def test_tr629_quiet_without_torch_import():
    assert _lines("def f(x, lengths):\n    return x.mean(1)\n", "TR629") == []


# -- TR630 -----------------------------------------------------------------------------------------
TR630 = H + """
    class ASR(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Sequential(nn.Linear(10, 5), nn.LogSoftmax(dim=1))
            self.ctc = nn.CTCLoss()
        def step(self, x, t, il, tl):
            lp = self.head(x).transpose(0, 1)         # line 12
            return self.ctc(lp, t, il, tl)

    def ok_reassigned(logits, t, il, tl):
        lp = F.log_softmax(logits, dim=2)
        lp = lp.transpose(0, 1)
        return F.ctc_loss(lp, t, il, tl)

    def ok_movedim(logits, t, il, tl):
        lp = logits.log_softmax(1).movedim(1, 2)      # (N, C, T) -> (N, T, C)
        return F.ctc_loss(lp.permute(1, 0, 2), t, il, tl)

    def nll_log_of_softmax(x, y):
        return F.nll_loss(torch.log(F.softmax(x, 0)), y)   # line 25

    def nll_time_axis(x, y):
        out = x.view(B, T, C).log_softmax(dim=1)      # line 28
        return F.nll_loss(out.transpose(1, 2), y)

    def nll_ok(x, y):
        out = x.view(B, T, C).log_softmax(dim=-1)
        return F.nll_loss(out.transpose(1, 2), y)

    def nll_unknown_rank(x, y):
        return F.nll_loss(x.log_softmax(-1).transpose(1, 2), y)

    def nll_flattened(x, y):
        return F.nll_loss(x.log_softmax(dim=0).view(-1, 5), y)

    def kl(s, t):
        return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=0), reduction="batchmean")   # line 42

    def kl_mixed_signs(s, t):
        return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=-1), reduction="batchmean")
"""


def test_tr630_flags_the_normaliser_only_when_provably_wrong():
    assert _lines(TR630, "TR630") == [12, 25, 28, 42]


# -- TR607: Poisson ---------------------------------------------------------------------------------
POISSON = H + """
    class Rate(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Sequential(nn.Linear(4, 1), nn.Softplus())
            self.crit = nn.PoissonNLLLoss()
        def forward(self, x):
            return self.head(x)
        def step(self, x, y):
            return self.crit(self(x), y)              # line 14

    def a(model, x, y):
        rate = torch.clamp(F.relu(model(x)), min=1e-6)
        return F.poisson_nll_loss(rate, y, log_input=True)   # line 18

    def b(z, y):
        crit = nn.PoissonNLLLoss(full=True)
        return crit(F.softplus(z) + 1e-6, y)          # line 22

    def c(z, y, flag):
        return F.poisson_nll_loss(z.exp(), y, log_input=flag)

    def d(z, y):
        return F.poisson_nll_loss(z, y)

    def e(x, y):
        out = Rate()(x).squeeze(-1)
        return F.poisson_nll_loss(out, y)             # line 32

    def f(z, y):
        return F.poisson_nll_loss(F.softplus(z), y, False)
"""


def test_tr607_poisson_rates_read_as_log_rates():
    assert _lines(POISSON, "TR607") == [14, 18, 22, 32]
