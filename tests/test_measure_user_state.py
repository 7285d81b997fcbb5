"""The probe and the checks leave the user's objects as they found them: weights (meta runs move a
model kept outside the harness), gradients, train/eval mode, BatchNorm statistics, optimizer state."""
import copy

import pytest
import torch
from torch import nn

import torchreview_lab as tr
from torchreview_lab.measure._preserve import UserState, modules_kept
from torchreview_lab.measure.meta import meta_run

SIZES = (16, 32)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snap):
    now = model.state_dict()
    return set(now) == set(snap) and all(now[k].device == snap[k].device and torch.equal(now[k], snap[k]) for k in snap)


def test_meta_runs_give_a_moved_model_its_weights_back():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    before = _snapshot(model)

    def harness(T, device="cpu"):
        m = model.to(device)
        return m(torch.randn(T, 8, device=device)).pow(2).mean()

    run = meta_run(harness, 4096, backward=True)
    assert run.ok, run.skipped_reason
    assert _same(model, before)
    assert all(p.grad is None for p in model.parameters())

    result = tr.check(harness, size=16, checks=["device"])
    assert _same(model, before), result.notes
    res = tr.scale(harness, sizes=SIZES, target=1024, repeats=1, progress=False)
    assert _same(model, before)
    assert res.points and res.target.meta_peak_bytes  # the probe itself still worked on the real model
    model(torch.randn(4, 8))  # and the model is usable


def test_meta_run_keeps_an_rnn_usable():
    lstm = nn.LSTM(4, 8, batch_first=True)
    before = _snapshot(lstm)

    def harness(T, device="cpu"):
        return lstm.to(device)(torch.randn(2, T, 4, device=device))[0].sum()

    assert meta_run(harness, 64).ok
    assert _same(lstm, before)
    out, _ = lstm(torch.randn(2, 5, 4))  # the flat-weights list points at the restored parameters
    assert out.device.type == "cpu" and torch.isfinite(out).all()


def test_gradients_are_put_back_and_not_accumulated():
    model = nn.Linear(16, 1)
    leaf = torch.randn(16, requires_grad=True)

    def step(T):
        x = torch.randn(T, 16)
        return (model(x) + (x * leaf).sum(-1, keepdim=True)).pow(2).mean()

    step(8).backward()
    user_grads = [model.weight.grad.clone(), model.bias.grad.clone(), leaf.grad.clone()]
    tr.check(step, size=16, checks=["grads", "nonfinite"])
    tr.scale(step, sizes=SIZES, backward=True, repeats=2, progress=False)
    for saved, now in zip(user_grads, [model.weight.grad, model.bias.grad, leaf.grad]):
        assert torch.equal(saved, now)

    model.zero_grad(set_to_none=True)
    leaf.grad = None
    tr.scale(step, sizes=SIZES, backward=True, repeats=2, progress=False)
    assert model.weight.grad is None and leaf.grad is None


def test_each_run_starts_without_gradients():
    """A run sees no gradient left by the one before (as after zero_grad(set_to_none=True)), so a
    peak measured with backward includes the gradients' allocation every time."""
    model = nn.Linear(8, 8)
    seen = []

    def step(T):
        seen.append(model.weight.grad is None)
        return model(torch.randn(T, 8)).sum()

    tr.scale(step, sizes=SIZES, backward=True, repeats=2, meta=False, progress=False)
    assert seen and all(seen)


def test_modules_reached_indirectly_get_their_gradients_back():
    registry = {"net": nn.Linear(4, 1)}  # not a name the harness's code mentions directly

    def get():
        return registry["net"]

    def step(T):
        return get()(torch.randn(T, 4)).sum()

    tr.scale(step, sizes=SIZES, backward=True, repeats=1, progress=False)
    assert registry["net"].weight.grad is None


def test_mode_buffers_and_optimizer_state_are_restored():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.1))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
    model.eval()
    weights, opt_state = _snapshot(model), copy.deepcopy(opt.state_dict())

    def train_step(T):
        model.train()
        loss = model(torch.randn(T, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    res = tr.scale(train_step, sizes=SIZES, repeats=2, progress=False)
    assert res.points
    assert not model.training and not model[1].training
    assert _same(model, weights)  # parameters and BatchNorm's running statistics
    state = opt.state_dict()["state"]
    for k, v in opt_state["state"].items():
        assert torch.equal(state[k]["exp_avg"], v["exp_avg"]) and torch.equal(state[k]["step"], v["step"])
    tr.check(train_step, size=16, checks=["grads", "leaks"])
    assert _same(model, weights)


def test_an_optimizer_made_inside_the_harness_does_not_move_the_users_weights():
    model = nn.Linear(4, 2)
    weights = _snapshot(model)

    def fit(T):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        model(torch.randn(T, 4)).sum().backward()
        opt.step()

    tr.scale(fit, sizes=SIZES, repeats=2, progress=False)
    assert _same(model, weights)


def test_weights_changed_in_place_by_hand_are_reported():
    model = nn.Linear(4, 2)

    def harness(T):
        with torch.no_grad():
            model.weight.add_(1.0)
        return model(torch.randn(T, 4)).sum()

    res = tr.scale(harness, sizes=SIZES, repeats=1, progress=False)
    assert any("modified in place" in w for w in res.warnings)


def test_user_state_leaves_no_hooks_behind():
    model = nn.Linear(2, 2)
    with UserState(lambda T: model(torch.randn(T, 2))) as state:
        with state.watching():
            model(torch.randn(1, 2))
    assert not nn.modules.module._global_forward_pre_hooks
    from torch.optim import optimizer as optim_module

    assert not optim_module._global_optimizer_pre_hooks


def test_modules_kept_restores_after_an_error():
    model = nn.Linear(2, 2)
    before = _snapshot(model)
    with pytest.raises(RuntimeError):
        with modules_kept():
            model.to("meta")
            raise RuntimeError("harness failed")
    assert _same(model, before)
    assert nn.Module._apply.__qualname__ == "Module._apply"


def test_compare_leaves_module_implementations_as_found():
    exact, fast = nn.Linear(4, 3), nn.Linear(4, 3)
    fast.load_state_dict(exact.state_dict())
    before = _snapshot(exact)

    def make(T):
        return (torch.randn(T, 4, requires_grad=True),)

    res = tr.compare(exact, fast, make, sizes=(1, 3))
    assert res.ok, res.cases
    assert _same(exact, before) and exact.weight.grad is None and fast.weight.grad is None


def test_probe_warns_when_backward_finds_no_graph():
    def forward_only(T):
        with torch.no_grad():
            return torch.randn(T, 4).sum()

    res = tr.scale(forward_only, sizes=SIZES, backward=True, repeats=1, meta=False, progress=False)
    assert sum("carries no graph" in w for w in res.warnings) == 1
    res = tr.scale(lambda T: {"loss": torch.randn(T, requires_grad=True).sum()}, sizes=SIZES, backward=True,
                   repeats=1, meta=False, progress=False)
    assert not any("carries no graph" in w for w in res.warnings)


def test_a_size_falling_time_or_memory_is_not_reported_as_a_law():
    def shrinking(T):  # less work at larger T: not a scaling law
        n = 4096 // T
        return torch.ones(n * 64).sum()

    res = tr.scale(shrinking, sizes=(64, 256, 1024), repeats=1, meta=False, progress=False)
    assert res.memory_fit.exponent == 0.0 and res.memory_fit.raw_exponent < 0
    assert any(w.startswith("memory falls with T") for w in res.warnings)
    assert not any("memory does not follow a power law" in w for w in res.warnings)
