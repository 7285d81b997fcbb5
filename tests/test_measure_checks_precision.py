"""Precision of the runtime checks: the stress test's false positives stay quiet, the bugs they hid are
found, and findings point at the user's line (TR012, TR013, TR016)."""
import copy
import math

import pytest
import torch
import torch._dynamo  # noqa: F401  (the first torch mode imports it lazily, ≈3 s: pay that at collection)
from torch import nn

from torchreview_lab.measure import check


def _line(fn, marker):
    """Line of the ``# <marker>`` comment in this file."""
    with open(__file__) as fh:
        for i, text in enumerate(fh, 1):
            if f"# {marker}" in text and "_line(" not in text:
                return i
    raise KeyError(marker)


def _rule(res, rule):
    return [f for f in res if f.rule == rule]


def _failed(res):
    return [n for n in res.notes if "check failed" in n]


# ---------------------------------------------------------------- TR013: masks and what reaches the loss
def causal_mask(T):
    q = torch.randn(T, 8, requires_grad=True)
    scores = q @ q.T / 4.0
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, -1).pow(2).sum()


def inplace_mask(T):
    q = torch.randn(T, 8, requires_grad=True)
    bias = torch.zeros(T, T)
    bias.masked_fill_(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), -math.inf)
    return torch.softmax(q @ q.T + bias, -1).pow(2).sum()


def full_mask(T):
    q = torch.randn(T, 8, requires_grad=True)
    mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)  # nn.Transformer's causal mask
    return torch.softmax(q @ q.T + mask, -1).pow(2).sum()


def new_full_mask(T):
    q = torch.randn(T, 8, requires_grad=True)
    scores = q @ q.T
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool))
    scores = torch.where(keep, scores, scores.new_full((T, T), float("-inf")))
    return torch.softmax(scores, -1).pow(2).sum()


def neg_inf_init(T):
    edges = torch.randn(T, 3, 3, requires_grad=True)
    alpha = torch.full((3,), -math.inf)  # impossible start states
    alpha[0] = 0.0
    for t in range(T):
        alpha = torch.logsumexp(alpha[:, None] + edges[t], dim=0)
    return torch.logsumexp(alpha, dim=0)


def fill_mask(T):
    x = torch.randn(T, 4, requires_grad=True)
    pad = torch.empty(T, 2).fill_(float("-inf"))
    return torch.logsumexp(torch.cat([x, pad], dim=1), dim=1).sum()


def inf_absorbed(T):
    x = torch.randn(T, 4, requires_grad=True)
    counts = torch.arange(4.0).expand(T, 4)
    logc = torch.log(counts).clamp(min=-30.0)  # log(0) = -inf, clamped right away, no gradient through it
    return (x * logc).sum()


def test_intentional_inf_masks_are_quiet():
    for fn in (causal_mask, inplace_mask, full_mask, new_full_mask, neg_inf_init, fill_mask):
        res = check(fn, size=5, checks=["nonfinite"])
        assert not _rule(res, "TR013"), f"{fn.__name__}: {res}"
        assert not _failed(res), res.notes


def test_inf_that_never_reaches_loss_or_gradients_is_quiet():
    res = check(inf_absorbed, size=4, checks=["nonfinite"])
    assert not _rule(res, "TR013"), res


def mask_then_sqrt(T):
    q = torch.randn(T, 8, requires_grad=True)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    p = torch.softmax((q @ q.T).masked_fill(mask, float("-inf")), -1)
    return torch.sqrt(p).sum()  # BUG:sqrt-backward


def test_forward_mask_does_not_hide_a_backward_inf():
    (f,) = _rule(check(mask_then_sqrt, size=5, checks=["nonfinite"]), "TR013")
    assert f.line == _line(mask_then_sqrt, "BUG:sqrt-backward")
    assert f.evidence["phase"] == "backward" and "backward of sqrt" in f.title


def sqrt_at_zero(T):
    x = torch.rand(T, requires_grad=True)
    x0 = torch.cat([torch.zeros(1), x])
    return torch.sqrt(x0).sum()  # BUG:sqrt-at-zero


def test_backward_finding_names_the_forward_line_and_op():
    (f,) = _rule(check(sqrt_at_zero, size=4, checks=["nonfinite"]), "TR013")
    assert f.path == __file__ and f.line == _line(sqrt_at_zero, "BUG:sqrt-at-zero")
    assert f.title.startswith("backward of sqrt") and f.evidence["backward_of"] == "sqrt"


def fully_masked_row(T):
    x = torch.randn(T, 4, requires_grad=True)
    mask = torch.zeros(T, 4, dtype=torch.bool)
    mask[0] = True  # a row with nothing left
    s = x.masked_fill(mask, float("-inf"))
    return torch.softmax(s, -1).pow(2).sum()  # BUG:masked-row


def mask_reaches_loss(T):
    x = torch.randn(T, 4, requires_grad=True)
    mask = torch.zeros(T, 4, dtype=torch.bool)
    mask[0] = True
    s = x.masked_fill(mask, float("-inf"))  # BUG:mask-to-loss
    return torch.logsumexp(s, -1).sum()


def log_then_zero(T):
    p = torch.softmax(torch.randn(T, 4), -1) * (torch.arange(4) > 0)
    logp = torch.log(p)  # BUG:log-origin
    return (logp * 0.0).sum()


def test_nonfinite_true_positives():
    (f,) = _rule(check(fully_masked_row, size=3, checks=["nonfinite"]), "TR013")
    assert f.line == _line(fully_masked_row, "BUG:masked-row") and "NaN" in f.title
    (f,) = _rule(check(mask_reaches_loss, size=3, checks=["nonfinite"]), "TR013")
    assert f.line == _line(mask_reaches_loss, "BUG:mask-to-loss") and "reaches the loss" in f.title
    (f,) = _rule(check(log_then_zero, size=3, checks=["nonfinite"]), "TR013")  # Inf -> NaN: traced to log
    assert f.line == _line(log_then_zero, "BUG:log-origin") and f.evidence["op"] == "log"


def sparse_matmul(T):
    idx = torch.stack([torch.arange(T), (torch.arange(T) * 3) % T])
    a = torch.sparse_coo_tensor(idx, torch.ones(T), (T, T))
    x = torch.randn(T, 4, requires_grad=True)
    return torch.sparse.mm(a, x).pow(2).sum()


def sparse_embedding(T):
    emb = nn.Embedding(10, 4, sparse=True)
    return emb(torch.arange(T) % 10).pow(2).sum()


def complex_output(T):
    x = torch.randn(T, requires_grad=True)
    return torch.fft.fft(x)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_sparse_tensors_run_through_the_checks():
    for fn in (sparse_matmul, sparse_embedding):
        res = check(fn, size=6, checks=["nonfinite", "grads"])
        assert not _failed(res) and not res, (fn.__name__, res, res.notes)


def test_complex_output_runs_through_the_checks():
    res = check(complex_output, size=6, checks=["nonfinite", "grads"])
    assert not _failed(res) and not res, (res, res.notes)
    assert any("complex" in n for n in res.notes)


# ---------------------------------------------------------------- TR012: copies, init, no_grad
def template_clones(T):
    layer = nn.Linear(4, 4)  # a template, only copied (nn.TransformerEncoder clones its layer)
    net = nn.Sequential(copy.deepcopy(layer), nn.ReLU(), copy.deepcopy(layer))
    return net(torch.randn(T, 4)).pow(2).mean()


def manual_init(T):
    w = torch.empty(4, 4, requires_grad=True)
    nn.init.kaiming_uniform_(w)
    spare = torch.zeros(4, requires_grad=True)  # initialised, never used
    with torch.no_grad():
        spare.fill_(1.0)
    return (torch.randn(T, 4) @ w).pow(2).mean()


def transformer_encoder(T):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    return enc(torch.randn(1, T, 8)).pow(2).mean()


def test_initialised_or_copied_tensors_are_not_reported():
    for fn in (template_clones, manual_init, transformer_encoder):
        res = check(fn, size=3, checks=["grads"])
        assert not _rule(res, "TR012"), f"{fn.__name__}: {res}"


def inference_no_grad(T):
    net = nn.Linear(4, 2)
    with torch.no_grad():
        return net(torch.randn(T, 4)).mean()


def inference_mode(T):
    net = nn.Linear(4, 2)
    with torch.inference_mode():
        return net(torch.randn(T, 4)).mean()


def teacher_no_grad(T):
    student, teacher = nn.Linear(4, 4), nn.Linear(4, 4)
    x = torch.randn(T, 4)
    with torch.no_grad():
        target = teacher(x)
    return (student(x) - target).pow(2).mean()


def unused_leaf_in_graph(T):
    w = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    _ = (w * b).detach()  # BUG:cut-leaf
    return (torch.randn(T, 4) * w).sum()


def test_grad_disabled_harnesses_get_a_note_not_a_finding():
    for fn in (inference_no_grad, inference_mode):
        res = check(fn, size=3, checks=["grads"])
        assert not res, f"{fn.__name__}: {res}"
        assert any("gradients disabled" in n for n in res.notes), res.notes


def test_modules_run_under_no_grad_are_not_reported():
    assert not check(teacher_no_grad, size=3, checks=["grads"])
    # a leaf that reaches the graph but never the loss is still reported
    (f,) = check(unused_leaf_in_graph, size=3, checks=["grads"])
    assert f.severity == "high" and f.evidence["no_grad"] == ["input [4]"]


# ---------------------------------------------------------------- TR016: aliases, side inputs
class _AliasBadSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # wrong: 2 * x


alias_bad_square = _AliasBadSquare.apply  # bound at import, before any check


def alias_harness(T):
    return alias_bad_square(torch.randn(T, requires_grad=True)).sum()


class _WeightedSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return w * x * x

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * 2 * w * x, None  # right for x; w never needs a gradient here


class _BadWeightedSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return w * x * x

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * 2 * x, None  # wrong: forgets w


class _NeverCalled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


def side_input_ok(T):
    return _WeightedSquare.apply(torch.randn(T, requires_grad=True), torch.linspace(0.5, 1.5, T)).sum()


def side_input_bug(T):
    return _BadWeightedSquare.apply(torch.randn(T, requires_grad=True), torch.linspace(0.5, 1.5, T)).sum()


def test_gradcheck_sees_calls_through_an_alias_and_restores_forward():
    before = _AliasBadSquare.__dict__["forward"]
    (f,) = check(alias_harness, size=4, checks=["gradcheck"])
    assert f.rule == "TR016" and "_AliasBadSquare" in f.title
    assert _AliasBadSquare.__dict__["forward"] is before and "apply" not in _AliasBadSquare.__dict__


def test_gradcheck_differentiates_only_inputs_that_required_grad():
    assert not check(side_input_ok, size=4, checks=["gradcheck"])
    (f,) = check(side_input_bug, size=4, checks=["gradcheck"])
    assert "_BadWeightedSquare" in f.title and "input 1" not in f.problem


def only_large_calls_it(T):
    x = torch.randn(T, requires_grad=True)
    if T > 100:  # never taken at the check's small size
        x = _NeverCalled.apply(x)
    return _WeightedSquare.apply(x, torch.ones(T)).sum()


def test_gradcheck_notes_a_function_it_never_saw_called():
    assert not any("not called" in n for n in check(side_input_ok, size=4, checks=["gradcheck"]).notes)
    res = check(only_large_calls_it, size=4, checks=["gradcheck"])
    assert any("_NeverCalled" in n and "not called" in n for n in res.notes), res.notes
    assert not any("_WeightedSquare " in n or "_WeightedSquare," in n for n in res.notes), res.notes
