"""Findings of an audit on 21 public research files (nanoGPT, minGPT, makemore, mamba-minimal, pytorch/examples,
the Annotated Transformer, enformer-pytorch...): false positives that must stay quiet, severities that follow
what dominates the cost, and misses that must be reported (TR103, TR105, TR204, TR304, TR403, TR406, TR621,
TR707, TR805)."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source


def _found(code: str, rule: str, standard: str = "production"):
    review = review_source(textwrap.dedent(code), "case.py", standard, select=[rule])
    return sorted((f.line, f.severity) for f in review.findings if f.rule == rule)


# ---------------------------------------------------------------- TR403 -----------------------------------
def test_tr403_comprehension_variable_is_this_iterations_batch():
    code = """
        def train(model, loader, opt, device):
            for batch in loader:
                batch = [t.to(device) for t in batch]
                x, y = batch
                model(x, y).backward()
                opt.step()
    """
    assert _found(code, "TR403") == []


# ---------------------------------------------------------------- TR406 -----------------------------------
ACTOR_CRITIC = """
    import torch
    policy = torch.nn.Linear(4, 2)

    def select_action(state):
        probs = torch.softmax(policy(torch.from_numpy(state).float()), dim=-1)
        return torch.distributions.Categorical(probs).sample().item()

    def finish_episode(values):
        return sum(v.item() for v in values)

    def main(env):
        for episode in range(100):
            state = env.reset()
            for t in range(1000):
                state, reward, done, _ = env.step(select_action(state))
                if done:
                    break
            finish_episode([policy(torch.zeros(4))])

    if __name__ == "__main__":
        main(None)
"""


def test_tr406_env_step_needs_a_python_value_and_a_cpu_only_script_is_low():
    assert _found(ACTOR_CRITIC, "TR406") == [(19, "low")]


def test_tr406_stays_medium_when_the_script_uses_a_gpu():
    code = ACTOR_CRITIC.replace("policy = torch.nn.Linear(4, 2)", "policy = torch.nn.Linear(4, 2).cuda()")
    assert _found(code, "TR406") == [(19, "medium")]


def test_tr406_a_library_module_is_not_assumed_to_run_on_cpu():
    code = """
        def norm(h):
            return h.norm().item()

        def run(hs):
            out = []
            for h in hs:
                out.append(norm(h))
            return out
    """
    assert _found(code, "TR406") == [(8, "medium")]


# ---------------------------------------------------------------- TR805 -----------------------------------
def test_tr805_a_default_only_read_is_quiet_and_a_mutated_object_default_is_reported():
    code = """
        class TrainState:
            step = 0
            samples = 0

        def show_example(fn, args=[]):
            return fn(*args)

        def execute_example(fn, args=[], kw={}):
            for a in args:
                print(a, len(args), kw.get("x"))
            fn(*args, **kw)

        def run_epoch(data, model, train_state=TrainState()):
            for batch in data:
                train_state.step += 1
                train_state.samples += len(batch)
            return train_state

        def keep(xs, seen=[]):
            seen.extend(xs)
            return seen
    """
    assert _found(code, "TR805") == [(14, "medium"), (20, "medium")]


# ---------------------------------------------------------------- TR105 -----------------------------------
def test_tr105_autoregressive_generation_is_low_and_plain_accumulation_high():
    code = """
        import torch

        @torch.no_grad()
        def generate(model, idx, max_new_tokens, block_size):
            for _ in range(max_new_tokens):
                idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
                logits, _ = model(idx_cond)
                probs = torch.softmax(logits[:, -1, :], dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1)
                idx = torch.cat((idx, idx_next), dim=1)
            return idx

        def collect(model, loader):
            out = None
            for x in loader:
                y = model(x)
                out = y if out is None else torch.cat([out, y])
            return out
    """
    assert _found(code, "TR105") == [(11, "low"), (18, "high")]


# ---------------------------------------------------------------- TR103 -----------------------------------
def test_tr103_sequential_scan_is_low_and_an_independent_step_medium():
    code = """
        import torch

        def selective_scan(deltaA, deltaB_u, C):
            b, d, l, n = deltaA.shape
            x = deltaA.new_zeros(b, d, n)
            ys = []
            for i in range(l):
                x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
                ys.append(torch.einsum('bdn,bn->bd', x, C[:, i]))
            return torch.stack(ys, dim=2)

        def per_step(x):
            T = x.shape[1]
            outs = []
            for t in range(T):
                outs.append(x[:, t] * 2)
            return torch.stack(outs, 1)
    """
    assert _found(code, "TR103") == [(11, "low"), (18, "medium")]


# ---------------------------------------------------------------- TR204 -----------------------------------
@pytest.mark.parametrize("expr", [
    "torch.log(F.softmax(x, dim=-1) + eps)",
    "torch.log(F.softmax(x, dim=-1) + 1e-10)",
    "torch.log(torch.clamp(torch.softmax(x, -1), min=1e-9))",
    "torch.softmax(x, -1).clamp(min=1e-6).log()",
    "(x.softmax(-1) + 1e-9).log()",
])
def test_tr204_log_of_softmax_with_eps_or_clamp(expr):
    code = f"import torch\nimport torch.nn.functional as F\ndef f(x, eps=1e-8):\n    return {expr}\n"
    assert _found(code, "TR204") == [(4, "medium")]


@pytest.mark.parametrize("expr", ["torch.log(p + eps)", "torch.log(F.softmax(x, -1) + prior)",
                                  "torch.log(torch.sigmoid(x) + eps) + torch.log1p(eps - torch.sigmoid(x))",
                                  "torch.log(p.clamp_min(1e-12))"])
def test_tr204_other_logs_are_quiet(expr):
    code = f"import torch\nimport torch.nn.functional as F\ndef f(x, p, prior, eps=1e-8):\n    return {expr}\n"
    assert _found(code, "TR204") == []


# ---------------------------------------------------------------- TR621 -----------------------------------
def test_tr621_shuffle_given_by_a_device_flag():
    code = """
        import torch
        from torch.utils.data import DataLoader
        def fit(model, opt, ds):
            use_cuda = torch.cuda.is_available()
            for x, y in DataLoader(ds, batch_size=8, shuffle=use_cuda):
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()
    """
    assert _found(code, "TR621") == [(6, "high")]


# ---------------------------------------------------------------- TR707 -----------------------------------
@pytest.mark.parametrize("code", [
    "import torch\nwith torch.enable_grad:\n    pass\n",
    "import torch as th\nwith th.inference_mode:\n    pass\n",
    "import torch\nwith torch.cuda.amp.autocast:\n    pass\n",
    "import torch\nwith torch.set_grad_enabled:\n    pass\n",
    "import torch\nfrom contextlib import nullcontext\nctx = torch.no_grad if True else nullcontext()\nwith ctx:\n    pass\n",
])
def test_tr707_reported(code):
    assert [s for _, s in _found(code, "TR707")] == ["critical"]


def test_tr707_quiet_on_calls_and_decorators():
    code = """
        import torch
        @torch.no_grad
        def f(model, x, train):
            ctx = torch.no_grad()
            with ctx, torch.inference_mode(), torch.set_grad_enabled(train), torch.autocast("cuda"):
                return model(x)
    """
    assert _found(code, "TR707") == []


# ---------------------------------------------------------------- TR304 -----------------------------------
def test_tr304_module_requires_grad_attribute():
    code = """
        import torch
        from torch import nn
        from torchvision import models

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(8, 2)
                self.scale = nn.Parameter(torch.ones(1))
                self.scale.requires_grad = False

        def freeze(model):
            for m in model.modules():
                m.requires_grad = False
            for p in model.parameters():
                p.requires_grad = False
            head = Head()
            head.requires_grad = False
            head.proj.weight.requires_grad = False
    """
    assert [ln for ln, _ in _found(code, "TR304")] == [15, 19]


def test_tr103_a_name_rebound_within_the_iteration_carries_nothing():
    code = """
        import torch

        def scores(sim, anchors, candidates):
            T = anchors.shape[0]
            out = []
            for i in range(T):
                s = sim(anchors[i], candidates)
                s = s.masked_fill(s > 0.9, -1e4)
                out.append(s)
            return torch.stack(out)
    """
    assert _found(code, "TR103") == [(11, "medium")]
