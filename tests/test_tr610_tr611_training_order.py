"""Near-misses and realistic variants for TR610 (zero_grad between backward and step) and TR611
(gradient clipping after the step), beyond the rules' own VALID/INVALID examples."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source


def _lines(code: str, rule: str):
    review = review_source(textwrap.dedent(code), "case.py", "production", select=[rule])
    return [(f.line, f.column) for f in review.findings if f.rule == rule]


TR610_QUIET = {
    "dcgan": """
        import torch.optim as optim
        optimizerD = optim.Adam(netD.parameters())
        optimizerG = optim.Adam(netG.parameters())
        for real, z in loader:
            netD.zero_grad()
            errD_real = crit(netD(real), ones)
            errD_real.backward()
            fake = netG(z)
            errD_fake = crit(netD(fake.detach()), zeros)
            errD_fake.backward()
            optimizerD.step()
            netG.zero_grad()
            errG = crit(netD(fake), ones)
            errG.backward()
            optimizerG.step()
    """,
    "gan_clears_generator_before_discriminator_step": """
        def train(G, D, opt_g, opt_d, z, real):
            d_loss = D(G(z)).mean() - D(real).mean()
            d_loss.backward()
            G.zero_grad()
            opt_d.step()
            opt_d.zero_grad()
            g_loss = -D(G(z)).mean()
            g_loss.backward()
            opt_g.step()
            opt_g.zero_grad()
    """,
    "accumulation": """
        def fit(model, opt, loader, k):
            for i, (x, y) in enumerate(loader):
                (model(x) - y).pow(2).mean().div(k).backward()
                if (i + 1) % k == 0:
                    opt.step()
                    opt.zero_grad()
    """,
    "skip_non_finite_batch": """
        import torch
        def fit(model, opt, loader):
            for x in loader:
                loss = model(x).mean()
                loss.backward()
                if not torch.isfinite(loss):
                    opt.zero_grad()
                    continue
                opt.step()
                opt.zero_grad()
    """,
    "grads_restored_after_clear": """
        import torch
        def fit(model, opt, x, params):
            model(x).sum().backward()
            grads = [p.grad.clone() for p in params]
            opt.zero_grad()
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
    """,
    "autograd_grad_after_clear": """
        import torch
        def fit(model, opt, x, params):
            model(x).sum().backward()
            opt.zero_grad()
            gs = torch.autograd.grad(model(x).pow(2).sum(), params)
            for p, g in zip(params, gs):
                p.grad = g
            opt.step()
    """,
    "lightning_manual_backward": """
        def training_step(self, batch, idx):
            opt = self.optimizers()
            self.manual_backward(self.warmup_loss(batch))
            opt.zero_grad()
            self.manual_backward(self.loss(batch))
            opt.step()
    """,
    "closure_step": """
        from torch.optim import LBFGS
        opt = LBFGS(model.parameters())
        model(x).sum().backward()
        opt.zero_grad()
        opt.step(lambda: model(x).sum())
    """,
    "frozen_teacher_cleared": """
        from torch.optim import SGD
        opt = SGD(student.parameters(), lr=0.1)
        for x in loader:
            loss = kd(student(x), teacher(x))
            loss.backward()
            teacher.zero_grad()
            opt.step()
            opt.zero_grad()
    """,
    "helper_runs_backward": """
        def backprop(model, x):
            model(x).sum().backward()
        def fit(model, opt, x):
            model(x).sum().backward()
            opt.zero_grad()
            backprop(model, x)
            opt.step()
    """,
}

TR610_FLAGGED = {
    "notebook_model_zero_grad": ("""
        import torch
        model = Net()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for epoch in range(10):
            for xb, yb in train_dl:
                loss = loss_fn(model(xb), yb)
                loss.backward()
                model.zero_grad()
                optimizer.step()
    """, (9, 9)),
    "step_before_backward": ("""
        def fit(model, optimizer, loader):
            for x, y in loader:
                optimizer.zero_grad()
                loss = (model(x) - y).abs().mean()
                optimizer.step()
                loss.backward()
    """, (4, 9)),
    "conditional_step_after_clear": ("""
        from torch import optim
        opt = optim.AdamW(net.parameters())
        for i, x in enumerate(loader):
            with autocast():
                net(x).mean().backward()
                opt.zero_grad(set_to_none=False)
            if i % 4 == 0:
                opt.step()
    """, (7, 9)),
    "parameter_loop": ("""
        import torch
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in loader:
            model(x).sum().backward()
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            opt.step()
    """, (6, 5)),
}


@pytest.mark.parametrize("name", sorted(TR610_QUIET))
def test_tr610_quiet(name):
    assert _lines(TR610_QUIET[name], "TR610") == []


@pytest.mark.parametrize("name", sorted(TR610_FLAGGED))
def test_tr610_flagged(name):
    code, where = TR610_FLAGGED[name]
    assert _lines(code, "TR610") == [where]


TR611_QUIET = {
    "clip_under_flag_before_step": """
        import torch
        def fit(model, opt, loader, clip):
            for x in loader:
                opt.zero_grad()
                model(x).sum().backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
    """,
    "accumulation": """
        from torch.nn.utils import clip_grad_norm_
        def fit(model, opt, loader, k):
            for i, x in enumerate(loader):
                model(x).sum().div(k).backward()
                if (i + 1) % k == 0:
                    clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    opt.zero_grad()
    """,
    "norm_for_logging": """
        import torch
        def fit(model, opt, x, log):
            model(x).sum().backward()
            opt.step()
            log(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
            opt.zero_grad()
    """,
    "hook_in_another_function": """
        import torch
        class Lit:
            def on_before_optimizer_step(self, optimizer):
                torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
            def training_step(self, batch):
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(self(batch))
                opt.step()
    """,
    "other_models_gradients": """
        import torch
        opt_d = torch.optim.Adam(D.parameters())
        opt_g = torch.optim.Adam(G.parameters())
        d_loss.backward()
        opt_d.step()
        torch.nn.utils.clip_grad_norm_(G.parameters(), 1.0)
        opt_g.step()
    """,
    "clip_then_step_after_scheduler": """
        import torch
        for x in loader:
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
            optimizer.step()
    """,
}

TR611_FLAGGED = {
    "notebook_end_of_loop": ("""
        import torch
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for xb, yb in dl:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            print(loss.item())
    """, (9, 5)),
    "clip_grad_module_path": ("""
        from torch.nn.utils.clip_grad import clip_grad_norm_
        def train_step(model, opt, x):
            opt.zero_grad()
            model(x).mean().backward()
            opt.step()
            norm = clip_grad_norm_(model.parameters(), max_norm=0.5)
            return norm
    """, (7, 12)),
    "deprecated_alias": ("""
        import torch.nn.utils as U
        def fit(model, optim, loader):
            for x in loader:
                optim.zero_grad()
                model(x).mean().backward()
                optim.step()
                U.clip_grad_norm(model.parameters(), 2.0)
    """, (8, 9)),
    "amp_after_update": ("""
        import torch
        scaler = torch.cuda.amp.GradScaler()
        for x in loader:
            opt.zero_grad()
            with torch.autocast("cuda"):
                loss = model(x).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    """, (11, 5)),
    "unrolled_next_backward": ("""
        import torch
        def two_steps(model, opt, a, b):
            model(a).sum().backward()
            opt.step()
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
            opt.zero_grad()
            model(b).sum().backward()
            opt.step()
            opt.zero_grad()
    """, (6, 5)),
}


@pytest.mark.parametrize("name", sorted(TR611_QUIET))
def test_tr611_quiet(name):
    assert _lines(TR611_QUIET[name], "TR611") == []


@pytest.mark.parametrize("name", sorted(TR611_FLAGGED))
def test_tr611_flagged(name):
    code, where = TR611_FLAGGED[name]
    assert _lines(code, "TR611") == [where]
