"""TR152 (a view of a DP table kept for backward, then written), TR158 (one tensor appended many times and
modified in place), TR305 (``torch.tensor`` of a list of tensors), TR310 (a loss term computed under
``no_grad``), TR311 (both halves of a stop-gradient pair detach the same side), TR405 (a CPU per-class loss
weight with GPU inputs) and TR503 (logging calls in ``forward``).

Each buggy spelling must fire at the line a reviewer would point at; the correct spellings next to it (row
recursions that rebind, EMA/BYOL/distillation targets under ``no_grad``, straight-through estimators, the
commitment half of a VQ loss, weights moved to the device) must stay quiet."""
from __future__ import annotations

import textwrap

from torchreview_lab.engine import review_source


def _lines(code: str, rule: str):
    review = review_source(textwrap.dedent(code), "case.py", "production", select=[rule])
    assert not review.errors, review.errors
    return sorted(f.line for f in review.findings if f.rule == rule)


TABLES = """
    import torch

    def hmm_forward(log_emit, log_trans, log_init):
        T, C = log_emit.shape
        alpha = log_emit.new_empty(T, C)
        alpha[0] = log_init + log_emit[0]
        for t in range(1, T):
            alpha[t] = torch.logsumexp(alpha[t - 1].unsqueeze(-1) + log_trans, dim=0) + log_emit[t]
        return torch.logsumexp(alpha[-1], dim=0)

    def ctc_like(lp, T, S):
        a = lp.new_zeros(T, S)
        a[0] = lp[0]
        for t in range(1, T):
            a[t, 1:] = torch.logaddexp(a[t - 1, 1:], a[t - 1, :-1]) + lp[t, 1:]
        return a[-1, -1]

    def rnn(x, w, T):
        h = torch.zeros(T, x.shape[-1])
        for t in range(1, T):
            h[t] = torch.tanh(h[t - 1] @ w + x[t])
        return h

    @torch.no_grad()
    def viterbi_scores(lp, T, S):
        a = lp.new_zeros(T, S)
        for t in range(1, T):
            a[t] = torch.logaddexp(a[t - 1], lp[t])
        return a
"""


def test_tr152_views_of_a_table_saved_for_backward():
    # verified with torch 2.13: ctc_like and rnn raise "modified by an inplace operation", hmm_forward trains
    assert _lines(TABLES, "TR152") == [16, 22]


STATES = """
    import torch

    def scan_bad(a, u):
        h = u.new_zeros(u.shape[0], u.shape[2])
        outs = []
        for t in range(u.shape[1]):
            h *= a
            h += u[:, t]
            outs.append(h)
        return torch.stack(outs, 1)

    def scan_ok(a, u):
        h = torch.zeros_like(u[:, 0])
        outs = []
        for t in range(u.shape[1]):
            h = a * h + u[:, t]
            outs.append(h)
        return torch.stack(outs, 1)

    def collect(model, loader):
        feats, buf = [], torch.zeros(10)
        for x in loader:
            buf.copy_(model(x))
            feats.append(buf.clone())
        return feats

    def counts(xs):
        hist, n = [], 0
        for x in xs:
            n += 1
            hist.append(n)
        return hist
"""


def test_tr158_alias_in_state_list():
    assert _lines(STATES, "TR158") == [8]


LOSSES = """
    import torch
    import torch.nn.functional as F

    def sequence_nll(scores, gold_idx):
        with torch.no_grad():
            log_norm = torch.logsumexp(scores, dim=-1)
        nll = log_norm - scores.gather(-1, gold_idx[..., None]).squeeze(-1)
        return nll.mean()

    def distill_loss(student, teacher, x, y):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        kd = F.kl_div(F.log_softmax(s_logits, -1), F.softmax(t_logits, -1), reduction="batchmean")
        return F.cross_entropy(s_logits, y) + kd

    def byol_loss(online, predictor, target, x1, x2):
        p = predictor(online(x1))
        with torch.no_grad():
            z = target(x2)
        return 2 - 2 * F.cosine_similarity(p, z, dim=-1).mean()

    def train_step(model, x, y, opt):
        out = model(x)
        with torch.no_grad():
            acc = (out.argmax(-1) == y).float().mean()
        loss = F.cross_entropy(out, y)
        loss.backward()
        return loss.detach(), acc

    def pg_loss(logp, returns, critic, s):
        with torch.no_grad():
            adv = returns - critic(s)
        return -(logp * adv).mean()
"""


def test_tr310_no_grad_loss_term():
    assert _lines(LOSSES, "TR310") == [6]


VQ = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class VQ(nn.Module):
        def forward(self, z):
            idx = torch.cdist(z, self.embedding.weight).argmin(-1)
            zq = self.embedding(idx)
            q_latent = F.mse_loss(zq, z.detach())
            e_latent = F.mse_loss(zq, z.detach())
            loss = q_latent + self.beta * e_latent
            return z + (zq - z).detach(), loss

    class VQGood(nn.Module):
        def forward(self, z):
            zq = self.embedding(self.lookup(z))
            loss = ((zq - z.detach()) ** 2).mean() + self.beta * ((zq.detach() - z) ** 2).mean()
            return z + (zq - z).detach(), loss

    def simsiam(p1, p2, z1, z2):
        return -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2

    def rvq(z, books):
        residual, losses = z, []
        for book in books:
            q = book.index_select(0, torch.cdist(residual, book).argmin(-1))
            codebook = F.mse_loss(residual, q.detach())
            commit = F.mse_loss(residual, q.detach())
            losses.append(codebook + 0.25 * commit)
            residual = residual - q.detach()
        return torch.tensor(losses).sum()
"""


def test_tr311_pair_detaches_same_side():
    # both detach z: the weighted commitment half is wrong; both detach the looked-up q: the codebook half
    assert _lines(VQ, "TR311") == [11, 28]


def test_tr305_list_of_loss_tensors():
    assert _lines(VQ, "TR305") == [32]


DEVICES = """
    import logging
    import torch
    import torch.nn.functional as F
    from torch import nn

    log = logging.getLogger(__name__)

    def finetune(model, batches, class_weights):
        for x, y in batches:
            x, y = x.cuda(), y.cuda()
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(class_weights))

    def fit(model, batches, class_weights, device):
        w = torch.tensor(class_weights).to(device)
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, weight=w)

    class Block(nn.Module):
        def forward(self, x):
            log.debug("tokens=%d", x.shape[1])
            if self.verbose:
                log.info("x")
            return x

    def train(model, loader, counts):
        crit = nn.CrossEntropyLoss(weight=torch.tensor(counts).float().reciprocal())
        crit2 = nn.CrossEntropyLoss(weight=torch.tensor(counts))
        for x, y in loader:
            x, y = x.to("cuda"), y.to("cuda")
            loss = crit(model(x), y) + crit2(model(x), y)

    def train_moved(model, loader, counts, device):
        crit = nn.CrossEntropyLoss(weight=torch.tensor(counts)).to(device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = crit(model(x), y)
"""


def test_tr405_cpu_loss_weight_with_gpu_inputs():
    assert _lines(DEVICES, "TR405") == [13, 33]


def test_tr503_logging_in_forward():
    assert _lines(DEVICES, "TR503") == [23]
