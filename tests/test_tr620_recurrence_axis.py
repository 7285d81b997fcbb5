"""TR620: a recurrence (CRF/HMM forward algorithm, Viterbi, DP tables) that reduces over the axis its own
state was broadcast along. Correct dynamic programmes in the common written forms stay quiet."""
from __future__ import annotations

import textwrap

import pytest
import torch

from torchreview_lab.engine import review_source


def _lines(code: str, path: str = "case.py"):
    review = review_source(textwrap.dedent(code), path, "research", select=["TR620"])
    return [f.line for f in review.findings if f.rule == "TR620"]


CRF = """
    import torch
    from torch import nn

    class LinearCRF(nn.Module):
        def __init__(self, num_tags):
            super().__init__()
            self.transitions = nn.Parameter(torch.randn(num_tags, num_tags) * 0.01)  # [from, to]
            self.start = nn.Parameter(torch.zeros(num_tags))

        def log_partition(self, emissions, mask):
            B, T, C = emissions.shape
            alpha = self.start.unsqueeze(0) + emissions[:, 0]  # (B, C)
            for t in range(1, T):
                scores = alpha.unsqueeze(2) + self.transitions.unsqueeze(0) + emissions[:, t].unsqueeze(1)
                new_alpha = torch.logsumexp(scores, dim={DIM})
                m = mask[:, t].unsqueeze(1)
                alpha = torch.where(m, new_alpha, alpha)
            return torch.logsumexp(alpha, dim=1)
"""


def test_crf_forward_algorithm_wrong_axis_is_flagged_and_right_axis_is_quiet():
    assert _lines(CRF.replace("{DIM}", "2")) == [16]
    assert _lines(CRF.replace("{DIM}", "-1")) == []  # mixed signs are not compared (rank unknown)
    assert _lines(CRF.replace("{DIM}", "1")) == []


def test_the_flagged_form_really_is_wrong():
    """The identity the finding states: reducing over the broadcast axis leaves the state out."""
    torch.manual_seed(0)
    alpha, trans = torch.randn(3, 4), torch.randn(4, 4)
    wrong = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=2)
    assert torch.allclose(wrong, alpha + torch.logsumexp(trans, dim=1))
    right = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1)
    brute = torch.stack([torch.logsumexp(alpha[:, :, None] + trans, dim=1)[:, j] for j in range(4)], 1)
    assert torch.allclose(right, brute) and not torch.allclose(wrong, right)


CORRECT_DPS = [
    # HMM forward, state last, prev axis -2
    """
    import torch
    def hmm_forward(log_pi, log_A, log_B, obs):
        alpha = log_pi + log_B[:, obs[0]]
        for t in range(1, len(obs)):
            alpha = torch.logsumexp(alpha[:, None] + log_A, dim=0) + log_B[:, obs[t]]
        return torch.logsumexp(alpha, 0)
    """,
    # batched Viterbi with back-pointers
    """
    import torch
    def viterbi(emissions, trans):
        score = emissions[:, 0]
        history = []
        for t in range(1, emissions.size(1)):
            next_score, idx = (score.unsqueeze(-1) + trans + emissions[:, t].unsqueeze(-2)).max(dim=-2)
            history.append(idx)
            score = next_score
        return score.max(-1)
    """,
    # DP table with explicit time index
    """
    import torch
    def fill(alpha, log_A, em, T):
        for t in range(1, T):
            alpha[:, t] = torch.logsumexp(alpha[:, t - 1, :, None] + log_A, dim=1) + em[:, t]
        return alpha
    """,
    # linear recurrence written as broadcast-multiply-sum over the state's axis
    """
    def rnn(h, W, xs):
        for x in xs:
            h = (h.unsqueeze(-1) * W).sum(-2) + x
        return h
    """,
    # a reduction over a broadcast axis whose result is not the state (pooling, not a recurrence)
    """
    import torch
    def pool(feats, bias, n):
        for i in range(n):
            out = torch.logsumexp(feats.unsqueeze(2) + bias, dim=2)
            feats = feats * 0.5
        return out
    """,
    # log-space matrix product (pyro-style), no loop
    """
    import torch
    def logmatmul(A, B):
        return torch.logsumexp(A.unsqueeze(-1) + B.unsqueeze(-3), dim=-2)
    """,
    # emissions broadcast along the reduced axis (they factor out; correct)
    """
    import torch
    def forward(alpha, trans, em):
        for t in range(em.size(1)):
            alpha = torch.logsumexp(alpha.unsqueeze(2) + trans + em[:, t].unsqueeze(1), dim=1)
        return alpha
    """,
    # a tensor index makes the rank unknown: not compared
    """
    import torch
    def gather_dp(alpha, idx, trans, T):
        for t in range(1, T):
            alpha[:, t] = torch.logsumexp(alpha[idx, t - 1, None] + trans, dim=1)
        return alpha
    """,
]


@pytest.mark.parametrize("code", CORRECT_DPS)
def test_correct_dynamic_programmes_stay_quiet(code):
    assert _lines(code) == []


LIST_DP = """
    import torch
    def lse(x, dim):
        return torch.logsumexp(x, dim)
    def semi_markov(span, trans, start, B, C, T, K):
        alphas = [span.new_full((B, C), float("-inf"))]
        for t in range(1, T + 1):
            cands = []
            for k in range(1, min(K, t) + 1):
                seg = span[:, t - k, t]
                if t == k:
                    cands.append(start + seg)
                else:
                    prev = alphas[t - k]
                    cands.append(lse(prev.unsqueeze(-1) + trans, dim={DIM}) + seg)
            alphas.append(lse(torch.stack(cands, dim=-1), dim=-1))
        return torch.stack(alphas, dim=1)
"""


def test_a_dp_kept_in_a_list_through_the_documents_own_logsumexp():
    assert _lines(LIST_DP.replace("{DIM}", "-1")) == [15]
    assert _lines(LIST_DP.replace("{DIM}", "-2")) == []


BUGGY_DPS = [
    ("""
    import torch
    def viterbi(emissions, trans):
        score = emissions[:, 0]
        for t in range(1, emissions.size(1)):
            score, idx = (score.unsqueeze(-1) + trans).max(dim=-1)
            score = score + emissions[:, t]
        return score
    """, 6),
    ("""
    import torch
    def hmm_forward(log_pi, log_A, log_B, obs):
        alpha = log_pi + log_B[:, obs[0]]
        for t in range(1, len(obs)):
            alpha = torch.logsumexp(alpha[:, None] + log_A, dim=1) + log_B[:, obs[t]]
        return alpha
    """, 6),
    ("""
    import torch
    def semi_markov(beta, edge, T, K):
        for t in range(1, T):
            for k in range(1, min(K, t) + 1):
                beta[:, t] = torch.logsumexp(beta[:, t - k, ..., None] + edge[:, t - k, k], dim=-1)
        return beta
    """, 6),
]


@pytest.mark.parametrize("code,line", BUGGY_DPS)
def test_wrong_axis_recurrences_are_flagged(code, line):
    assert _lines(code) == [line]


def test_notebook_cell_location_and_fix():
    review = review_source(textwrap.dedent(CRF.replace("{DIM}", "2")), "crf.py", "research", select=["TR620"])
    (f,) = review.findings
    assert f.severity == "critical" and f.category == "algorithm-correctness"
    assert f.fix.after == "torch.logsumexp(scores, dim=1)"
