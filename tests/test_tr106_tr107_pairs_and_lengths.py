"""TR106 (dense pairwise tensor where only a band / an edge list is used), TR107 (a recursion that stops one
position early), and the length-as-index cases of TR601 and expand-sums of TR101.

Full and causal attention must stay quiet in TR106 (every key is used); a band/window mask, a max-width span
mask, a neighbourhood radius or an edge-list fill must fire at the line that builds the dense tensor."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source

H = "import torch\nimport torch.nn.functional as F\n"


def _lines(code: str, rule: str):
    review = review_source(H + textwrap.dedent(code), "case.py", "production", select=[rule])
    assert not review.errors, review.errors
    return sorted(f.line - 2 for f in review.findings if f.rule == rule)


BAND_TRIANGLES = """
def swa(q, k, v, window):
    T = q.size(-2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.size(-1) ** -0.5
    ones = torch.ones(T, T, dtype=torch.bool, device=q.device)
    band = torch.triu(torch.tril(ones, diagonal=0), diagonal=-window)
    return F.softmax(scores.masked_fill(~band, float("-inf")), dim=-1) @ v
"""
RADIUS_WHERE = """
def local(q, k, v, radius):
    T = q.shape[1]
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    far = (i - j).abs() > radius
    s = torch.einsum("bid,bjd->bij", q, k)
    s = torch.where(far, torch.full_like(s, -1e4), s)
    return s.softmax(-1) @ v
"""
FULL = """
def full(q, k, v):
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return s.softmax(-1) @ v
"""
CAUSAL = """
def causal(q, k, v):
    T = q.shape[-2]
    i = torch.arange(T, device=q.device)
    s = q @ k.transpose(-2, -1)
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return s.softmax(-1) @ v
"""
GCN = """
def gcn(x, edge_index, weight):
    num_nodes = x.size(0)
    src, dst = edge_index
    A = torch.zeros((num_nodes, num_nodes), device=x.device)
    A[dst, src] = 1.0
    return A @ x @ weight
"""
CONFUSION = """
def confusion(pred, target, num_classes):
    cm = torch.zeros(num_classes, num_classes)
    cm[target, pred] = 1
    return cm
"""


@pytest.mark.parametrize("code,lines", [(BAND_TRIANGLES, [4]), (RADIUS_WHERE, [7]), (FULL, []), (CAUSAL, []),
                                        (GCN, [5]), (CONFUSION, [])])
def test_tr106(code, lines):
    assert _lines(code, "TR106") == lines


def test_tr102_leaves_edge_list_adjacency_to_tr106():
    assert _lines(GCN, "TR102") == []


@pytest.mark.parametrize("code,lines", [
    ("def pool(h, attention_mask):\n    lengths = attention_mask.sum(dim=1)\n"
     "    return h[torch.arange(h.shape[0]), lengths]\n", [3]),
    ("def pool(h, attention_mask):\n    lengths = attention_mask.sum(dim=1) - 1\n"
     "    return h[torch.arange(h.shape[0]), lengths]\n", []),
    ("def bonus(dur, seg_len):\n    \"\"\"dur: (K, C), row k is duration k + 1; seg_len: (N,) in 1..K.\"\"\"\n"
     "    return dur.index_select(0, seg_len)\n", [3]),
    ("def bonus(dur, seg_len):\n    \"\"\"dur: (K, C), row k is duration k + 1; seg_len: (N,) in 1..K.\"\"\"\n"
     "    return dur.index_select(0, seg_len - 1)\n", []),
    ("def bonus(dur, seg_len):\n    \"\"\"dur: (K + 1, C); seg_len: (N,) in 1..K.\"\"\"\n"
     "    return dur.index_select(0, seg_len)\n", []),
])
def test_tr601_length_as_index(code, lines):
    assert _lines(code, "TR601") == lines


@pytest.mark.parametrize("code,lines", [
    ("def rnn(x, cell, h):\n    T = x.shape[0]\n    for t in range(T - 1):\n        h = cell(x[t], h)\n    return h\n", [3]),
    ("def lm(x, model, loss):\n    T = x.shape[1]\n    for t in range(T - 1):\n"
     "        loss = loss + model(x[:, t], x[:, t + 1])\n    return loss\n", []),
    ("def back(score, bp):\n    T = bp.shape[0]\n    for t in range(T - 1, 0, -1):\n        score = bp[t][score]\n    return score\n", []),
])
def test_tr107(code, lines):
    assert _lines(code, "TR107") == lines


def test_tr101_expand_sum_over_loop_sizes():
    code = ("def logz(seg, trans, K):\n    B, T, C = seg.shape[0], seg.shape[1], trans.shape[0]\n"
            "    edges = seg[..., None, :] + trans.expand(B, T, K, C, C)\n    a = edges[:, 0, 0]\n"
            "    for t in range(1, T):\n        a = a + edges[:, t, 0]\n    return a\n")
    assert _lines(code, "TR101") == [3]
