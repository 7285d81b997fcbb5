"""TR619: a softmax normalises an axis that the matmul/einsum it feeds does not contract.

Correct attention in its many spellings (multi-head, einsum, cross-attention, nn.Softmax modules,
transposed layouts, backward formulas, pointer networks, mixture weights, Markov chains, slot attention
with renormalisation) must stay quiet; the wrong-axis variants must fire on the softmax line."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_cells, review_source


def _findings(code: str, path: str = "case.py"):
    review = review_source(textwrap.dedent(code), path, "research", select=["TR619"])
    return [f for f in review.findings if f.rule == "TR619"]


def _lines(code: str):
    return [f.line for f in _findings(code)]


H = """
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
"""

MHA = H + """
    class MultiHeadAttention(nn.Module):
        def __init__(self, d_model, h, attn_dropout=0.1):
            super().__init__()
            self.h, self.dk = h, d_model // h
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out = nn.Linear(d_model, d_model)
            self.attn_drop = nn.Dropout(attn_dropout)

        def forward(self, x, pad_mask):
            B, N, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            q = q.view(B, N, self.h, self.dk).transpose(1, 2)
            k = k.view(B, N, self.h, self.dk).transpose(1, 2)
            v = v.view(B, N, self.h, self.dk).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.dk)
            scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
            attn = scores.softmax(dim={dim})
            attn = self.attn_drop(attn)
            ctx = attn @ v
            return self.out(ctx.transpose(1, 2).reshape(B, N, -1))
"""

QUIET = [
    MHA.replace("{dim}", "-1"),
    MHA.replace("{dim}", "3"),  # rank 4 from .view(B, N, h, dk): dim 3 is the last axis
    # einsum attention, keys summed
    H + """
    def attention(q, k, v, scale):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * scale
        attn = sim.softmax(dim=-1)
        return torch.einsum("b h i j, b h j d -> b h i d", attn, v)
    """,
    H + """
    def attention(q, k, v):
        sim = torch.einsum("bhid,bhjd->bhij", q, k)
        attn = F.softmax(sim, dim=3)
        return torch.einsum("bhij,bhjd->bhid", attn, v)
    """,
    # cross-attention, and a backward-style formula that contracts the query axis on purpose
    H + """
    def cross_attention_backward(q, k, v, grad_out):
        p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = p @ v
        grad_v = p.transpose(-2, -1) @ grad_out
        grad_p = grad_out @ v.transpose(-2, -1)
        grad_s = p * (grad_p - (grad_p * p).sum(-1, keepdim=True))
        return out, grad_v, grad_s @ k
    """,
    H + """
    def flash_bwd_reference(q, k, do, scale):
        p = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * scale, dim=-1)
        dv = torch.einsum("bhij,bhid->bhjd", p, do)
        return dv
    """,
    # SAGAN / DANet: value on the left, attention transposed on the right
    H + """
    class SelfAttn(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.softmax = nn.Softmax(dim=-1)
        def forward(self, x):
            B, C, W, H = x.size()
            q = self.query_conv(x).view(B, -1, W * H).permute(0, 2, 1)
            k = self.key_conv(x).view(B, -1, W * H)
            energy = torch.bmm(q, k)
            attention = self.softmax(energy)
            v = self.value_conv(x).view(B, -1, W * H)
            out = torch.bmm(v, attention.permute(0, 2, 1))
            return out.view(B, C, W, H)
    """,
    H + """
    def big_gan_attention(theta, phi, g):
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        return torch.bmm(g, beta.transpose(1, 2))
    """,
    # pointer network / Bahdanau: attention over the sequence, pooled with bmm
    H + """
    class Pointer(nn.Module):
        def forward(self, enc, dec_h):
            u = self.v(torch.tanh(self.W1(enc) + self.W2(dec_h).unsqueeze(1))).squeeze(-1)
            a = F.softmax(u, dim=1)
            ctx = torch.bmm(a.unsqueeze(1), enc).squeeze(1)
            return ctx, F.log_softmax(u, dim=-1)
    """,
    H + """
    def pool(scores, enc):
        a = torch.softmax(scores, dim=-1)
        return torch.bmm(a.unsqueeze(1), enc).squeeze(1)
    """,
    # mixture weights: softmax over the components, a weighted sum written by hand or as a matvec
    H + """
    def mix(w, x, feats):
        p = w.softmax(0)
        y = (p[:, None] * x).sum(0)
        z = feats @ torch.softmax(w, dim=-1)
        return y, z
    """,
    # Markov chain / HMM forward algorithm in probability space
    H + """
    def hmm_forward(init_logits, trans_logits, emissions):
        trans = torch.softmax(trans_logits, dim=-1)
        alpha = torch.softmax(init_logits, dim=-1) * emissions[0]
        for e in emissions[1:]:
            alpha = (alpha @ trans) * e
        return alpha.sum(-1)
    """,
    # factorised attention (CoaT): keys normalised over tokens, contracted over tokens
    H + """
    def factor_att(q, k, v):
        k_softmax = k.softmax(dim=-2)
        factor = k_softmax.transpose(-1, -2) @ v
        return q @ factor
    """,
    # linear attention: queries over features, keys over tokens
    H + """
    def linear_attention(q, k, v):
        q = q.softmax(dim=-1)
        k = k.softmax(dim=-2)
        context = torch.einsum("bhnd,bhne->bhde", k, v)
        return torch.einsum("bhnd,bhde->bhne", q, context)
    """,
    # slot attention: softmax over slots, renormalised over inputs before pooling
    H + """
    def slot_step(q, k, v, eps=1e-8):
        dots = torch.einsum("bid,bjd->bij", q, k)
        attn = dots.softmax(dim=1) + eps
        attn = attn / attn.sum(dim=-1, keepdim=True)
        return torch.einsum("bjd,bij->bid", v, attn)
    """,
    H + """
    def weighted_mean(q, k, v):
        attn = (q @ k.mT).softmax(dim=-2)
        return (attn @ v) / attn.sum(dim=-1, keepdim=True)
    """,
    # non-negative dim with an unknown rank: abstain
    H + """
    def attend(q, k, v):
        p = F.softmax(q @ k.transpose(-2, -1), dim=2)
        return p @ v
    """,
    # log_softmax into a loss, softmax into a loss
    H + """
    def loss(logits, y):
        lp = F.log_softmax(logits, dim=-2)
        return F.nll_loss(lp, y) + (torch.softmax(logits, -2) @ y.float()).sum()
    """.replace("(torch.softmax(logits, -2) @ y.float()).sum()", "0"),
    # an unknown module between softmax and matmul
    H + """
    class A(nn.Module):
        def forward(self, s, v):
            p = self.norm(s.softmax(dim=-2))
            return p @ v
    """,
    # the weights are one of several bindings that may reach the matmul
    H + """
    def attend(s, v, by_query):
        if by_query:
            p = s.softmax(dim=-2)
        else:
            p = s.softmax(dim=-1)
        return p @ v
    """,
    # weights times their own renormalising factor
    H + """
    def attend(s, v):
        p = torch.softmax(s, dim=-2)
        return (p * (1.0 / p.sum(-1, keepdim=True))) @ v
    """,
    # dual softmax (LoFTR): a product of two softmaxes
    H + """
    def match(sim, feat):
        conf = F.softmax(sim, -2) * F.softmax(sim, -1)
        return conf @ feat
    """,
    # softmax over the last axis of keys on -2 layout: (B, N_k, N_q) normalised over keys, transposed
    H + """
    def attend_kq(q, k, v):
        s = k @ q.transpose(-2, -1)
        p = s.softmax(dim=-2)
        return p.transpose(-2, -1) @ v
    """,
    # soft assignment from a learned layer or to learned centres: clusters normalised, items summed (NetVLAD)
    H + """
    class NetVLAD(nn.Module):
        def forward(self, x):
            N, C = x.shape[:2]
            soft_assign = self.conv(x).view(N, self.num_clusters, -1)
            soft_assign = F.softmax(soft_assign, dim=1)
            x_flat = x.view(N, C, -1)
            return torch.bmm(soft_assign, x_flat.transpose(1, 2))
    """,
    H + """
    class SoftKMeans(nn.Module):
        def forward(self, x):
            sim = torch.einsum("kd,bnd->bkn", self.centroids, x)
            r = sim.softmax(dim=1)
            return torch.einsum("bkn,bnd->bkd", r, x)
    """,
    # capsule routing: coupling normalised over parents, summed over children
    H + """
    def dynamic_routing(u_hat, q, iters=3):
        b = torch.einsum("bid,bjd->bji", q, u_hat)
        c = b.softmax(dim=-2)
        return torch.einsum("bji,bid->bjd", c, u_hat)
    """.replace("def dynamic_routing", "def routing_step"),
    # the same weights contracted over their own axis elsewhere: the author knows the axis
    H + """
    def co_pool(k, v, w):
        a = (k @ w.mT).softmax(dim=-2)
        pooled = a.transpose(-2, -1) @ v
        spread = a @ pooled
        return spread
    """,
    # a star import that hides F: an implicit dim is not a method's dim
    """
    from fastai.torch_core import *
    def attend(q, k, v):
        p = F.softmax(q @ k.mT)
        return p @ v
    """,
    # numpy / scipy are not torch
    """
    import numpy as np
    from scipy.special import softmax
    def f(s, v):
        p = softmax(s, axis=0)
        return p @ v
    """,
]


@pytest.mark.parametrize("code", QUIET)
def test_correct_attention_is_quiet(code):
    assert _findings(code) == []


BUGGY = [
    (MHA.replace("{dim}", "-2"), 23),
    (MHA.replace("{dim}", "2"), 23),  # rank 4 known: dim 2 is the query axis
    (H + """
    def attention(q, k, v):
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        p_attn = F.softmax(scores, dim=-2)
        p_attn = F.dropout(p_attn, p=0.1, training=True)
        return torch.matmul(p_attn, v), p_attn
    """, 9),
    (H + """
    def attention(q, k, v, mask):
        s = torch.bmm(q, k.transpose(1, 2)).masked_fill(mask, -1e9)
        p = torch.nn.functional.softmax(s.float(), dim=1).type_as(s)
        return p.bmm(v)
    """, 9),
    (H + """
    def attention(q, k, v):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k)
        attn = sim.softmax(dim=-2)
        return torch.einsum("b h i j, b h j d -> b h i d", attn, v)
    """, 9),
    (H + """
    def attention(q, k, v):
        attn = torch.einsum("...id,...jd->...ij", q, k).softmax(-2)
        return torch.einsum("...ij,...jd->...id", attn, v)
    """, 8),
    # value-first layout: the right operand transposed
    (H + """
    def attention(q, k, v):
        attn = (q @ k.mT).softmax(dim=-2)
        out_t = v.transpose(-2, -1) @ attn.transpose(-2, -1)
        return out_t
    """, 8),
    # an nn.Softmax module over the wrong axis: the call is reported, the fix is in the construction
    (H + """
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.softmax = nn.Softmax(dim=1)
            self.drop = nn.Dropout(0.1) if True else nn.Identity()
        def forward(self, q, k, v):
            energy = torch.bmm(q, k.permute(0, 2, 1))
            attn = self.drop(self.softmax(energy))
            return torch.bmm(attn, v)
    """, 14),
    # F from a star import, einops.einsum
    ("""
    from fastai.torch_core import *
    def attend(q, k, v):
        p = F.softmax(q @ k.mT, dim=-2)
        return p @ v
    """, 4),
    ("""
    import torch
    from einops import einsum
    def attend(q, k, v):
        attn = einsum(q, k, "b h i d, b h j d -> b h i j").softmax(dim=-2)
        return einsum(attn, v, "b h i j, b h j d -> b h i d")
    """, 5),
    # inline masking of an inline softmax, a dtype keyword
    (H + """
    def attention(q, k, v, keep):
        p = torch.softmax(q @ k.mT, dim=-2) * keep[:, None]
        return p @ v
    """, 8),
    (H + """
    def attention(q, k, v):
        return (q @ k.mT).softmax(-2, dtype=torch.float32) @ v
    """, 8),
    # the name rebound to its own softmax
    (H + """
    def attention(q, k, v):
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-2)
        return attn @ v
    """, 9),
    # `import torch as th`, masked multiply
    ("""
    import torch as th
    def attend(q, k, v, keep):
        w = th.softmax(q @ k.transpose(-1, -2), -2)
        w = w * keep
        return th.matmul(w, v)
    """, 4),
]


@pytest.mark.parametrize("code, line", BUGGY)
def test_wrong_axis_fires_on_the_softmax_line(code, line):
    assert _lines(code) == [line]


def test_problem_names_the_matmul_and_the_fix_the_contracted_axis():
    [f] = _findings(MHA.replace("{dim}", "-2"))
    assert f.severity == "critical" and f.category == "algorithm-correctness"
    assert "`attn @ v` (line 25)" in f.problem and "axis -1" in f.problem
    assert f.fix.before == "scores.softmax(dim=-2)" and f.fix.after == "scores.softmax(dim=-1)"
    [g] = _findings(MHA.replace("{dim}", "2"))
    assert g.fix.after == "scores.softmax(dim=3)"


def test_einsum_fix_and_letters():
    [f] = _findings(BUGGY[4][0])
    assert "`j`" in f.problem and "`i`" in f.problem
    assert f.fix.after == "sim.softmax(dim=-1)"


def test_module_softmax_fix_is_the_construction():
    [f] = _findings(BUGGY[7][0])
    assert f.fix.before == "nn.Softmax(dim=1)" and f.fix.after == "nn.Softmax(dim=2)"


def test_notebook_attention_cell():
    cells = [
        {"cell_type": "markdown", "source": "# Attention"},
        {"cell_type": "code",
         "source": "import math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"},
        {"cell_type": "code", "source": textwrap.dedent("""\
            class MHA(nn.Module):
                def forward(self, q, k, v, pad_mask):
                    scores = q @ k.transpose(-2, -1) / math.sqrt(self.dk)  # (B, h, N, N)
                    scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
                    attn = scores.softmax(dim=-2)          # BUG: normalises over queries, not keys
                    attn = F.dropout(attn, p=self.attn_dropout)
                    ctx = attn @ v  # (B, h, N, dk)
                    return ctx
            """)},
    ]
    found = review_cells(cells, "nb.ipynb", "research", select=["TR619"]).findings
    assert [(f.cell, f.line) for f in found] == [(2, 5)]
    assert found[0].fix.after == "scores.softmax(dim=-1)"
    assert "line 7" in found[0].problem


def test_notebook_top_level_cell():
    cells = [{"cell_type": "code", "source": "import torch\nq = k = v = torch.randn(2, 4, 8, 16)\n"},
             {"cell_type": "code", "source": "attn = torch.softmax(q @ k.mT, dim=-2)\nout = attn @ v\n"}]
    found = review_cells(cells, "nb.ipynb", "research", select=["TR619"]).findings
    assert [(f.cell, f.line) for f in found] == [(1, 1)]


def test_reported_once_for_several_matmuls():
    code = H + """
    def f(s, v, w):
        p = s.softmax(dim=-2)
        return p @ v, p @ w
    """
    assert _lines(code) == [8]
