"""TR622 (all_reduce SUM of per-rank means), TR308 (policy-gradient advantage not detached) and TR407 (DDP local rank dropped) on
realistic code: the bugs as written in training scripts, and the correct forms that must stay quiet."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source


def _lines(code: str, rule: str):
    review = review_source(textwrap.dedent(code), "case.py", "research", select=[rule])
    return [f.line for f in review.findings if f.rule == rule]


DDP_VALIDATE = """
    import torch
    import torch.distributed as dist

    @torch.no_grad()
    def validate(model, loader):
        model.eval()
        correct = torch.zeros((), device="cuda")
        total = torch.zeros((), device="cuda")
        for images, target in loader:
            logits = model(images.cuda(non_blocking=True))
            correct += (logits.argmax(dim=1) == target.cuda()).sum()
            total += target.numel()
        {BODY}
"""


@pytest.mark.parametrize("body,expected", [
    ("acc = correct / total\n        dist.all_reduce(acc)\n        return acc.item()", [15]),
    ("dist.all_reduce(correct)\n        dist.all_reduce(total)\n        return (correct / total).item()", []),
    ("acc = correct / total\n        dist.all_reduce(acc)\n        return (acc / dist.get_world_size()).item()", []),
    ("acc = correct / total\n        dist.all_reduce(acc, op=dist.ReduceOp.AVG)\n        return acc.item()", []),
])
def test_tr622_validation_accuracy(body, expected):
    assert _lines(DDP_VALIDATE.replace("{BODY}", body), "TR622") == expected


def test_tr622_loss_logging_with_in_place_division_is_quiet():
    code = """
        import torch.distributed as dist
        def log_loss(loss, world_size, step):
            reduced = loss.detach().mean()
            dist.all_reduce(reduced)
            reduced /= world_size
            print(step, reduced.item())
    """
    assert _lines(code, "TR622") == []
    assert _lines(code.replace("            reduced /= world_size\n", ""), "TR622") == [5]


A2C = """
    import torch
    import torch.nn.functional as F

    def update(net, opt, obs, acts, rets):
        logits, values = net(obs)
        dist = torch.distributions.Categorical(logits=logits)
        logp = dist.log_prob(acts)
        advantages = rets - values{DETACH}
        policy_loss = -(logp * advantages).mean()
        value_loss = F.mse_loss(values, rets)
        loss = policy_loss + 0.5 * value_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
"""


def test_tr308_actor_critic_update():
    assert _lines(A2C.replace("{DETACH}", ""), "TR308") == [10]
    assert _lines(A2C.replace("{DETACH}", ".detach()"), "TR308") == []


PPO = """
    import torch

    def ppo_loss(policy, obs, acts, old_logp, advantages, clip=0.2):
        dist = policy(obs)
        logp = dist.log_prob(acts)
        ratio = torch.exp(logp - old_logp)
        surr1 = ratio * advantages
        surr2 = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
        return -torch.min(surr1, surr2).mean()

    def reinforce(log_probs, returns, baseline):
        b = baseline.mean().item()
        return -(log_probs * (returns - b)).sum()
"""


def test_tr308_ppo_and_a_number_baseline_stay_quiet():
    assert _lines(PPO, "TR308") == []


DDP_MAIN = """
    import os
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    def main(args):
        dist.init_process_group(backend="nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ["LOCAL_RANK"])
        {BIND}
        model = build_model(args).cuda()
        model = DDP(model{IDS})
        train(model, args)
"""


@pytest.mark.parametrize("bind,ids,expected", [
    ("pass", "", [13]),
    ("torch.cuda.set_device(local_rank)", "", []),
    ("pass", ", device_ids=[local_rank]", []),
])
def test_tr407_local_rank_read_and_dropped(bind, ids, expected):
    assert _lines(DDP_MAIN.replace("{BIND}", bind).replace("{IDS}", ids), "TR407") == expected


def test_tr407_one_visible_gpu_per_process_needs_no_local_rank():
    code = DDP_MAIN.replace("{BIND}", "pass").replace("{IDS}", "").replace(
        '        local_rank = int(os.environ["LOCAL_RANK"])\n', "")
    assert _lines(code, "TR407") == []
