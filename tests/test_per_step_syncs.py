"""TR403/TR404/TR406: a sync or a transfer costs when it runs once per batch. In the body of an epoch
loop (one that contains, directly or through a function of the document, the loop over batches) it
runs once per pass over the data and stays quiet; per batch it is reported, with a severity that
follows how often it runs (periodic logging low, evaluation batches low/medium, training steps medium)."""
import pytest

from torchreview_lab.engine import review_cells, review_source

RULES = ["TR403", "TR404", "TR406"]


def _found(code, standard="research"):
    return sorted((f.rule, f.line, f.severity) for f in review_source(code, "t.py", standard, select=RULES).findings)


EPOCH_LEVEL = [
    # .item() and a constant's .to(device) once per epoch, next to the loop over a DataLoader
    "import torch\nimport torch.nn.functional as F\nds = torch.utils.data.TensorDataset(torch.rand(64, 4))\n"
    "data = torch.utils.data.DataLoader(ds, batch_size=8)\nheld_out = torch.rand(16, 4)\n"
    "for epoch in range(3):\n    for (xb,) in data:\n        loss = F.mse_loss(net(xb.cuda()), xb.cuda())\n"
    "        loss.backward()\n        opt.step()\n    with torch.no_grad():\n"
    "        v = F.mse_loss(net(held_out.cuda()), held_out.cuda()).item()\n    print(epoch, loss.item(), v)\n",
    # helpers that loop over the batches and sync once at the end, called once per epoch
    "def run_epoch(model, loader, opt):\n    total = 0.0\n    for x, y in loader:\n        loss = model(x, y)\n"
    "        loss.backward()\n        opt.step()\n        total += loss.detach()\n    return total.item()\n\n"
    "def score(model, loader):\n    s = 0\n    for x, y in loader:\n        s += (model(x).argmax(-1) == y).sum()\n"
    "    return s.item()\n\ndef main(model, tr, va, opt, epochs):\n    for ep in range(epochs):\n"
    "        print(run_epoch(model, tr, opt), score(model, va))\n",
    # a trainer class: the batch loop is in a method called through self
    "class Trainer:\n    def fit_epoch(self, batches):\n        for b in batches:\n            self.opt.zero_grad()\n"
    "            self.model(b).mean().backward()\n            self.opt.step()\n\n"
    "    def fit(self, batches, epochs):\n        for ep in range(epochs):\n            self.fit_epoch(batches)\n"
    "            print(self.model.scale.item())\n",
    # a while epoch loop; the DataLoader is a parameter annotated as such, whatever its name
    "from torch.utils.data import DataLoader\ndef train(model, opt, stream: DataLoader, x_ref, device):\n"
    "    done = False\n    while not done:\n        for xb in stream:\n            model(xb).sum().backward()\n"
    "            opt.step()\n        done = model(x_ref.to(device)).max().item() < 0.1\n",
    # a sync in a small loop of its own, once per epoch (a metric per class after the batch loop)
    "def fit(model, loader, opt, per_class):\n    for ep in range(10):\n        for x in loader:\n"
    "            model(x).sum().backward()\n            opt.step()\n        for k, v in per_class.items():\n"
    "            print(k, v.item())\n",
]


@pytest.mark.parametrize("code", EPOCH_LEVEL)
def test_once_per_epoch_is_quiet(code):
    assert _found(code) == []


def test_per_batch_work_inside_an_epoch_loop_is_still_reported():
    code = ("import torch\ndef log_norm(h):\n    return h.norm().item()\n\n"
            "def fit(model, loader, opt, mean, device):\n    for epoch in range(5):\n        for x in loader:\n"
            "            loss = model((x - mean.to(device)).cuda()).sum()\n            loss.backward()\n"
            "            opt.step()\n            print(loss.item(), log_norm(loss))\n")
    assert _found(code) == [("TR403", 8, "medium"), ("TR404", 11, "medium"), ("TR406", 11, "medium")]


def test_a_step_loop_that_trains_at_its_own_level_is_not_an_epoch_loop():
    # GAN: several critic steps per generator step; the generator's loss is read every step
    code = ("def fit(G, D, data, opt_g, opt_d, n_critic):\n    for step in range(100000):\n"
            "        for _ in range(n_critic):\n            d_loss = D(next(data)).mean() - D(G(z)).mean()\n"
            "            d_loss.backward()\n            opt_d.step()\n        g_loss = -D(G(z)).mean()\n"
            "        g_loss.backward()\n        opt_g.step()\n        hist.append(g_loss.item())\n")
    assert _found(code) == [("TR404", 10, "medium")]


def test_an_inner_loop_that_is_not_over_data_does_not_make_an_epoch_loop():
    code = ("def fit(model, xs, opt):\n    for x in xs:\n        model(x).sum().backward()\n"
            "        for p in model.parameters():\n            p.grad.clamp_(-1, 1)\n        opt.step()\n"
            "        print(x.norm().item())\n")
    assert _found(code) == [("TR404", 7, "medium")]


def test_rarely_true_guards_are_low_and_their_else_branch_is_not():
    code = ("def fit(model, loader, opt, log):\n    for step, x in enumerate(loader):\n        loss = model(x).sum()\n"
            "        loss.backward()\n        opt.step()\n        if step % 50 == 0:\n            log(loss.item())\n"
            "        if step == 0:\n            log(x.max().item())\n        if not step % 10:\n"
            "            log(x.min().item())\n        else:\n            log(x.mean().item())\n")
    assert _found(code) == [("TR404", 7, "low"), ("TR404", 9, "low"), ("TR404", 11, "low"), ("TR404", 13, "medium")]


def test_a_syncing_helper_under_a_periodic_guard_is_low():
    code = ("def norm(h):\n    return h.norm().item()\n\ndef fit(model, loader, opt):\n"
            "    for i, x in enumerate(loader):\n        loss = model(x).sum()\n        loss.backward()\n"
            "        opt.step()\n        if i % 100 == 0:\n            print(norm(loss))\n")
    assert _found(code) == [("TR406", 10, "low")]


def test_per_batch_metrics_in_an_evaluation_loop_are_low_in_research_medium_in_production():
    code = ("import torch\n@torch.no_grad()\ndef evaluate(model, loader):\n    correct = 0\n    for x, y in loader:\n"
            "        correct += (model(x).argmax(-1) == y).sum().item()\n    return correct\n")
    assert _found(code) == [("TR404", 6, "low")]
    assert _found(code, "production") == [("TR404", 6, "medium")]


def test_per_step_item_in_a_training_loop_stays_medium_in_both_standards():
    code = ("def fit(model, batches, opt):\n    total = 0.0\n    for x in batches:\n        loss = model(x).sum()\n"
            "        loss.backward()\n        opt.step()\n        total += loss.item()\n    return total\n")
    assert _found(code) == [("TR404", 7, "medium")]
    assert _found(code, "production") == [("TR404", 7, "medium")]


def test_notebook_epoch_loop_calling_a_helper_from_another_cell_is_quiet():
    helper = ("import torch\ndef validate(model, val_loader):\n    tot = 0.0\n    for x, y in val_loader:\n"
              "        tot += model(x, y).detach()\n    return tot.item()\n")
    loop = ("for epoch in range(3):\n    for x, y in train_loader:\n        model(x, y).backward()\n"
            "        optimizer.step()\n    print(validate(model, val_loader))\n")
    cells = [{"cell_type": "code", "source": helper}, {"cell_type": "code", "source": loop}]
    assert review_cells(cells, "nb.ipynb", "research", select=RULES).findings == []


@pytest.mark.parametrize("code, line, severity", [
    # values computed before the loop: each sync is a small copy, not a stall
    ("def log(metrics, writer):\n    for k, v in metrics.items():\n        writer.add_scalar(k, v.item())\n", 3, "low"),
    ("def decode(best):\n    out = []\n    for i in range(best.size(0)):\n        out.append(best[i].item())\n"
     "    return out\n", 4, "low"),
    ("def fit(losses):\n    t = 0.0\n    for loss in losses:\n        t += loss.item()\n    return t\n", 4, "low"),
    # computed in the loop: the host waits for that iteration's kernels
    ("def dists(points):\n    out = []\n    for i in range(len(points)):\n"
     "        out.append((points[i] - points[0]).pow(2).sum().item())\n    return out\n", 4, "medium"),
    ("def grads(params):\n    for p in params:\n        print(p.grad.norm().item())\n", 3, "medium"),
    ("def total(xs, f):\n    acc = 0\n    for x in xs:\n        acc += f(x)\n        print(acc.item())\n", 5, "medium"),
    ("def pick(x, ts):\n    for t in ts:\n        m = x > t\n        print(x[m].tolist())\n", 4, "medium"),
])
def test_a_loop_over_precomputed_values_is_low_one_that_computes_them_medium(code, line, severity):
    assert _found(code) == [("TR404", line, severity)]


def test_numpy_values_are_not_device_syncs():
    code = (
        "import numpy as np\nimport torch\nrng = np.random.default_rng(0)\n"
        "def fit(model, opt, loader):\n    for x in loader:\n        n = int(rng.integers(1, 300))\n"
        "        ids = rng.integers(1, 30000, n).tolist()\n        idx = np.arange(n).tolist()\n"
        "        loss = model(x).mean()\n        loss.backward()\n        opt.step()\n        print(loss.item())\n")
    from torchreview_lab.engine import review_source

    found = [(f.rule, f.line) for f in review_source(code, "n.py", "research", select=["TR404"]).findings]
    assert found == [("TR404", 12)]  # only the tensor's .item()
