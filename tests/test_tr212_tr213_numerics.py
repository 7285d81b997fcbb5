"""Numerics found by an independent stress set: fp16 overflow of mask constants and squares (TR212,
TR213), weighted log-sum-exp (TR203), renormalised unnormalised log-scores (TR202), padded prefix sums
(TR201), negated-mask counts (TR209) and per-step syncs in backtraces and short demo loops (TR404)."""
import pytest

from torchreview_lab.engine import review_cells, review_source


def _found(code, rules, standard="production"):
    return sorted((f.rule, f.line, f.severity) for f in review_source(code, "t.py", standard, select=rules).findings)


@pytest.mark.parametrize("code, expected", [
    # docstring says fp16 autocast
    ("from torch import nn\nclass S(nn.Module):\n    def forward(self, h, valid):\n"
     "        \"\"\"h: (B, T, H), run under fp16 autocast.\"\"\"\n        s = h @ h.transpose(1, 2)\n"
     "        return s.masked_fill(~valid, -1e9)\n", [("TR212", 6, "medium")]),
    # the training script uses a GradScaler (float16 mixed precision)
    ("import torch\nMASK = -1e10\ndef attn(q, k, m):\n    s = q @ k.transpose(-1, -2)\n    s.masked_fill_(m == 0, MASK)\n"
     "    return s.softmax(-1)\nscaler = torch.cuda.amp.GradScaler()\n", [("TR212", 5, "medium")]),
    # finfo.min, -inf, a float16-safe constant, bf16 autocast, float32 code: quiet
    ("import torch\ndef a(s, m):\n    \"\"\"fp16.\"\"\"\n    return s.masked_fill(m, torch.finfo(s.dtype).min)\n", []),
    ("import torch\ndef a(s, m):\n    \"\"\"fp16.\"\"\"\n    return s.masked_fill(m, float('-inf'))\n", []),
    ("import torch\ndef a(s, m):\n    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
     "        return s.masked_fill(m, -1e9)\n", []),
    ("def a(s, m):\n    return s.masked_fill(m, -1e9)\n", []),
])
def test_tr212_mask_constant_beyond_float16(code, expected):
    assert _found(code, ["TR212"]) == expected


@pytest.mark.parametrize("code, expected", [
    ("import torch\ndef rms_norm(x, w, eps=1e-6):\n    ms = x.half().pow(2).mean(dim=-1, keepdim=True)\n"
     "    return x * torch.rsqrt(ms.float() + eps) * w\n", [("TR213", 3, "medium")]),
    ("import torch\ndef layer_var(x):\n    h = x.to(dtype=torch.float16)\n    c = h - h.mean(-1, keepdim=True)\n"
     "    return (c ** 2).mean(-1)\n", [("TR213", 5, "medium")]),
    ("import torch\ndef f(x):\n    return x.float().pow(2).mean(-1)\n", []),
    ("import torch\ndef f(x):\n    return x.bfloat16().pow(2).mean(-1)\n", []),
])
def test_tr213_squares_in_float16(code, expected):
    assert _found(code, ["TR213"]) == expected


def test_tr203_weighted_log_sum_exp_and_matmul_forward_step():
    code = ("import torch\ndef mix(log_comp, logits):\n    w = torch.softmax(logits, -1)\n"
            "    return torch.log(torch.sum(w * log_comp.exp(), dim=-1))\n\n"
            "def fwd(alpha, trans):\n    return torch.log(torch.matmul(alpha.exp(), trans))\n\n"
            "def ok(log_comp, log_w):\n    return torch.logsumexp(log_comp + log_w, dim=-1)\n")
    assert _found(code, ["TR203"]) == [("TR203", 4, "medium"), ("TR203", 7, "medium")]


def test_tr202_renormalised_log_joint_is_flagged_log_softmax_is_not():
    code = ("import torch\ndef post(fwd, bwd):\n    log_ab = fwd + bwd\n    p = torch.exp(log_ab)\n"
            "    return p / p.sum(-1, keepdim=True)\n\n"
            "def ok(x):\n    log_p = torch.log_softmax(x, -1)\n    p = log_p.exp()\n    return p / p.sum(-1, keepdim=True)\n")
    assert _found(code, ["TR202"]) == [("TR202", 4, "medium")]


def test_tr201_padded_prefix_sums_differenced_are_medium_centred_ones_quiet():
    code = ("import torch\nimport torch.nn.functional as F\ndef seg(x, s, e):\n"
            "    c = torch.cat([x.new_zeros(x.shape[0], 1), x.cumsum(1)], dim=1)\n    return c[:, e] - c[:, s]\n\n"
            "def seg_ok(x, s, e):\n    mu = x.mean(1)\n    c = F.pad(torch.cumsum(x - mu[:, None], 1), (1, 0))\n"
            "    return c[:, e] - c[:, s] + mu * (e - s)\n")
    assert _found(code, ["TR201"]) == [("TR201", 4, "medium")]


def test_tr209_counts_of_a_negated_mask():
    code = ("import torch\ndef mean_unpadded(x, pad):\n    return (x * ~pad).sum(-1) / torch.sum(~pad, dim=-1)\n\n"
            "def ok(x, pad):\n    return (x * ~pad).sum(-1) / (~pad).sum(-1).clamp_min(1)\n")
    assert _found(code, ["TR209"]) == [("TR209", 3, "medium")]


def test_tr404_backtrace_is_medium_a_short_literal_demo_loop_low():
    code = ("def decode(score, backptrs):\n    path = [score.argmax().item()]\n    for bp in reversed(backptrs):\n"
            "        path.append(bp[path[-1]].item())\n    return path[::-1]\n")
    assert _found(code, ["TR404"]) == [("TR404", 4, "medium")]
    cells = [{"cell_type": "code", "source": (
        "hits = []\nfor step in range(50):\n    logits = model(x)\n    loss = F.cross_entropy(logits, y)\n"
        "    opt.zero_grad()\n    loss.backward()\n    opt.step()\n    hits.append((logits.argmax(-1) == y).cpu().numpy())\n"
        "print(loss.item())\n")}]
    found = [(f.line, f.severity) for f in review_cells(cells, "nb.ipynb", "production", select=["TR404"]).findings]
    assert found == [(8, "low")]
    long_loop = ("def fit(model, x, y, opt):\n    for step in range(100000):\n        loss = model(x, y)\n"
                 "        loss.backward()\n        opt.step()\n        print(loss.item())\n")
    assert _found(long_loop, ["TR404"]) == [("TR404", 6, "medium")]


def test_tr203_is_high_on_a_forward_variable_medium_otherwise():
    code = ("import torch\ndef log_z(log_emit, log_trans):\n    alpha = log_emit[0]\n"
            "    for t in range(1, log_emit.shape[0]):\n"
            "        alpha = torch.logsumexp(alpha[:, None] + log_trans, 0) + log_emit[t]\n"
            "    return torch.log(torch.exp(alpha).sum())\n\n"
            "def once(scores):\n    return torch.log(torch.exp(scores).sum(-1))\n")
    assert _found(code, ["TR203"]) == [("TR203", 6, "high"), ("TR203", 9, "medium")]
