"""Near-misses and realistic variants for the training-loop protocol rules: TR614 (zero_grad on every
accumulation micro-step), TR615 (accumulated loss not scaled), TR616 (clipping scaled gradients),
TR617 (DistributedSampler without set_epoch) and TR618 (parameter update assigned to the loop variable)."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source


def _lines(code: str, rule: str, path: str = "case.py"):
    review = review_source(textwrap.dedent(code), path, "production", select=[rule])
    return [f.line for f in review.findings if f.rule == rule]


HF_NO_TRAINER = """
    def train(model, optimizer, lr_scheduler, train_dataloader, args):
        for epoch in range(args.num_train_epochs):
            model.train()
            for step, batch in enumerate(train_dataloader):
                outputs = model(**batch)
                loss = outputs.loss
                loss = loss / args.gradient_accumulation_steps
                loss.backward()
                if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
"""

CORRECT_AMP_ACCUM = """
    import torch
    from torch import nn
    def train_one_epoch(model, loader, optimizer, scaler, accum_steps, max_norm):
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        for i, (images, labels) in enumerate(loader):
            with torch.autocast("cuda", dtype=torch.float16):
                loss = criterion(model(images), labels)
            scaler.scale(loss / accum_steps).backward()
            is_update = (i + 1) % accum_steps == 0 or (i + 1) == len(loader)
            if is_update:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
"""

DDP_NO_SYNC = """
    import contextlib
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    def train(model, train_ds, epochs, accum, micro_bs):
        sampler = DistributedSampler(train_ds, shuffle=True, seed=1234)
        train_dl = DataLoader(train_ds, batch_size=micro_bs, sampler=sampler, drop_last=True)
        opt = torch.optim.AdamW(model.parameters())
        scaler = torch.amp.GradScaler("cuda")
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            opt.zero_grad(set_to_none=True)
            for i, batch in enumerate(train_dl):
                last = (i + 1) % accum == 0 or (i + 1) == len(train_dl)
                with contextlib.nullcontext() if last else model.no_sync():
                    loss_sum, n_tok = token_loss(model(batch["x"]), batch["y"])
                    loss = loss_sum / n_tok.clamp_min(1) / accum
                    scaler.scale(loss).backward()
                if last:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
"""


@pytest.mark.parametrize("rule", ["TR614", "TR615", "TR616", "TR617", "TR618"])
@pytest.mark.parametrize("code", [HF_NO_TRAINER, CORRECT_AMP_ACCUM, DDP_NO_SYNC], ids=["hf", "amp", "ddp"])
def test_correct_training_loops_are_quiet(rule, code):
    assert _lines(code, rule) == []


BUGGY_NOTEBOOK_LOOP = """
    import torch
    import torch.nn.functional as F
    ACCUM = 8
    scaler = torch.cuda.amp.GradScaler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    def lm_loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    for epoch in range(3):
        for it, (x, y) in enumerate(train_dl):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = lm_loss(model(x).logits, y)
            scaler.scale(loss).backward()
            if (it + 1) % ACCUM == 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
"""


@pytest.mark.parametrize("rule,line", [("TR614", 11), ("TR615", 13), ("TR616", 16)])
def test_buggy_accumulation_loop(rule, line):
    assert _lines(BUGGY_NOTEBOOK_LOOP, rule) == [line]


def test_tr615_scaled_inside_a_helper_that_reads_n():
    code = """
        ACCUM = 4
        def compute_loss(model, x):
            return model(x).mean() / ACCUM
        for i, x in enumerate(loader):
            compute_loss(model, x).backward()
            if (i + 1) % ACCUM == 0:
                opt.step()
                opt.zero_grad()
    """
    assert _lines(code, "TR615") == []


def test_tr615_literal_n_unknown_callee_is_quiet_but_torch_loss_fires():
    unknown = """
        from mylib import loss_fn
        for i, x in enumerate(loader):
            loss_fn(model, x).backward()
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
    """
    torch_loss = """
        import torch.nn.functional as F
        for i, (x, y) in enumerate(loader):
            F.mse_loss(model(x), y).backward()
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
    """
    assert _lines(unknown, "TR615") == []
    assert _lines(torch_loss, "TR615") == [4]


def test_tr614_continue_guard_and_model_zero_grad():
    code = """
        import torch
        def fit(model, loader, accum):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for i, x in enumerate(loader):
                model.zero_grad()
                (model(x).mean() / accum).backward()
                if (i + 1) % accum:
                    continue
                opt.step()
    """
    assert _lines(code, "TR614") == [6]


def test_tr616_unscale_in_earlier_branch_and_plain_scaler_param():
    quiet = """
        import torch
        def step(model, opt, scaler, loss, clip):
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    """
    fires = """
        import torch
        def step(model, opt, scaler, loss):
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    """
    assert _lines(quiet, "TR616") == []
    assert _lines(fires, "TR616") == [5]


def test_tr617_phase_loop_inside_epoch_loop_and_range_len():
    quiet = """
        from torch.utils.data import DataLoader, DistributedSampler
        def fit(ds, epochs):
            sampler = DistributedSampler(ds)
            loader = DataLoader(ds, sampler=sampler)
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for phase in ("train", "val"):
                    for x in loader:
                        step(x, phase)
            for epoch in range(epochs):
                for i in range(len(loader)):
                    print(i)
    """
    fires = """
        from torch.utils.data import DataLoader, DistributedSampler
        from tqdm import tqdm
        def fit(ds, epochs):
            loader = DataLoader(ds, sampler=DistributedSampler(ds))
            for epoch in range(epochs):
                pbar = tqdm(loader, desc=f"epoch {epoch}")
                for x in pbar:
                    step(x)
    """
    assert _lines(quiet, "TR617") == []
    assert _lines(fires, "TR617") == [6]


def test_tr618_named_buffers_and_fix_text():
    code = """
        def reset(model):
            for name, buf in model.named_buffers():
                buf = buf * 0
    """
    review = review_source(textwrap.dedent(code), "case.py", "production", select=["TR618"])
    (f,) = [f for f in review.findings if f.rule == "TR618"]
    assert f.line == 4 and not f.autofix and "buf.copy_(buf * 0)" in f.fix.after


def test_tr618_rebinding_read_later_is_quiet():
    code = """
        import torch
        @torch.no_grad()
        def update(ema, model, d):
            for e, p in zip(ema.parameters(), model.parameters()):
                e = e.data
                e.mul_(d).add_(p.data, alpha=1 - d)
    """
    assert _lines(code, "TR618") == []


def test_tr616_threshold_scaled_with_the_scaler_is_quiet():
    code = """
        import torch
        def step(model, opt, scaler, loss):
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 * scaler.get_scale())
            scaler.step(opt)
            scaler.update()
    """
    assert _lines(code, "TR616") == []


def test_tr617_epoch_set_by_hand_is_quiet():
    code = """
        from torch.utils.data import DataLoader, DistributedSampler
        def fit(ds, epochs):
            sampler = DistributedSampler(ds)
            loader = DataLoader(ds, sampler=sampler)
            for epoch in range(epochs):
                sampler.epoch = epoch
                for x in loader:
                    step(x)
    """
    assert _lines(code, "TR617") == []


TRAINER = """
    import torch
    from torch import nn
    class Trainer:
        def __init__(self, model, cfg):
            self.model, self.cfg = model, cfg
            self.criterion = nn.CrossEntropyLoss()
            self.opt = torch.optim.AdamW(model.parameters())

        def fit(self, loader):
            for step, (x, y) in enumerate(loader):
                loss = {loss}
                loss.backward()
                if (step + 1) % self.cfg.accum == 0:
                    self.opt.step()
                    self.opt.zero_grad()

        def compute_loss(self, x, y):
            return {body}
"""


@pytest.mark.parametrize("loss,body,expected", [
    ("self.criterion(self.model(x), y)", "0", [12]),
    ("self.compute_loss(x, y)", "self.criterion(self.model(x), y)", [12]),
    ("self.compute_loss(x, y)", "self.criterion(self.model(x), y) / self.cfg.accum", []),
    ("self.compute_loss(x, y)", "self.helper(x, y)", []),
    ("self.inherited_loss(x, y)", "0", []),
    ("scaled_loss(self, x, y)", "0", []),
    ("self.criterion(self.model(x), y) * self.cfg.loss_weight", "0", []),
])
def test_tr615_trainer_class(loss, body, expected):
    code = TRAINER.replace("{loss}", loss).replace("{body}", body)
    if "helper" in body:
        code += "\n        def helper(self, x, y):\n            return 0\n"
    assert _lines(code, "TR615") == expected


def test_tr614_finds_the_cleared_optimizer_among_several_stepped():
    code = """
        import torch
        def fit(encoder, decoder, loader, accum):
            opt_enc = torch.optim.AdamW(encoder.parameters())
            opt_dec = torch.optim.AdamW(decoder.parameters())
            for i, x in enumerate(loader):
                opt_dec.zero_grad()
                (decoder(encoder(x)).mean() / accum).backward()
                if (i + 1) % accum == 0:
                    opt_enc.step()
                    opt_dec.step()
                    opt_enc.zero_grad()
    """
    assert _lines(code, "TR614") == [7]
    assert _lines(code.replace("                opt_dec.zero_grad()\n", "").replace(
        "opt_enc.zero_grad()", "opt_enc.zero_grad()\n                    opt_dec.zero_grad()"), "TR614") == []


def test_tr605_train_once_before_the_epoch_loop_does_not_undo_an_evaluation_inside_it():
    code = """
        import torch
        @torch.no_grad()
        def evaluate(model, loader):
            model.eval()
            return sum(model(x).mean().item() for x in loader)
        def fit(model, opt, train_loader, val_loader, epochs):
            model.train()
            for epoch in range(epochs):
                for step, x in enumerate(train_loader):
                    opt.zero_grad()
                    model(x).mean().backward()
                    opt.step()
                    if step % 100 == 0:
                        evaluate(model, val_loader)
    """
    assert _lines(code, "TR605") == [15]
    restored = code.replace("                        evaluate(model, val_loader)\n",
                            "                        evaluate(model, val_loader)\n                        model.train()\n")
    assert _lines(restored, "TR605") == []


def test_tr154_features_kept_by_a_helper_called_after_eval_without_no_grad():
    code = """
        import torch
        def extract(model, loader):
            feats = []
            for img in loader:
                feats.append(model.encode_image(img))
            return torch.cat(feats)
        model.eval()
        img_feats = extract(model, val_loader)
    """
    assert _lines(code, "TR154") == [5]
    guarded = code.replace("img_feats = extract(model, val_loader)",
                           "with torch.no_grad():\n            img_feats = extract(model, val_loader)")
    assert _lines(guarded, "TR154") == []
    assert _lines(code.replace("model.eval()\n", ""), "TR154") == []  # no eval before: a training-time helper?


def test_tr151_loss_read_from_a_model_output_attribute():
    code = """
        def train(model, loader, optimizer, scaler, accum):
            epoch_loss = 0.0
            for step, (ids, labels) in enumerate(loader):
                out = model(input_ids=ids, labels=labels)
                loss = out.loss / accum
                scaler.scale(loss).backward()
                epoch_loss += loss
                optimizer.step()
            return epoch_loss
    """
    assert _lines(code, "TR151") == [8]
    assert _lines(code.replace("epoch_loss += loss", "epoch_loss += loss.item()"), "TR151") == []


def test_tr617_loader_returned_by_a_builder_and_trained_in_main():
    code = """
        from torch.utils.data import DataLoader, DistributedSampler
        def build_loaders(train_ds, bs):
            train_sampler = DistributedSampler(train_ds, shuffle=True)
            train_loader = DataLoader(train_ds, batch_size=bs, sampler=train_sampler)
            return train_loader, train_sampler
        def main(model, opt, ds, epochs):
            train_loader, train_sampler = build_loaders(ds, 64)
            for epoch in range(epochs):
                for x in train_loader:
                    model(x).mean().backward()
                    opt.step()
    """
    assert _lines(code, "TR617") == [9]
    fixed = code.replace("            for epoch in range(epochs):\n",
                         "            for epoch in range(epochs):\n                train_sampler.set_epoch(epoch)\n")
    assert _lines(fixed, "TR617") == []


def test_tr605_the_ensemble_in_eval_mode_is_not_the_estimator_being_trained():
    """torchensemble-style: a local estimator trains; ``self.eval()`` (the ensemble) and helper methods of the
    class called in the loop (``self._clip_lr``) are not the trained network."""
    code = """
        import torch
        class Ensemble(torch.nn.Module):
            def fit(self, loader, test_loader, epochs):
                estimator = self._make_estimator()
                optimizer = self._make_optimizer(estimator)
                estimator.train()
                for epoch in range(epochs):
                    for x, y in loader:
                        optimizer = self._clip_lr(optimizer)
                        optimizer.zero_grad()
                        loss = self._criterion(estimator(x), y)
                        loss.backward()
                        optimizer.step()
                    self.eval()
                    self.evaluate(test_loader)
    """
    assert _lines(code, "TR605") == []


def test_tr617_in_a_notebook_reports_at_the_epoch_loop_and_names_the_line_within_the_cell():
    from torchreview_lab.engine import review_cells

    cells = [
        {"cell_type": "code", "id": "a", "source": "from torch.utils.data import DataLoader, DistributedSampler\n"
                                                  "sampler = DistributedSampler(ds)\n"
                                                  "loader = DataLoader(ds, batch_size=8, sampler=sampler)\n"},
        {"cell_type": "markdown", "id": "m", "source": "## Training"},
        {"cell_type": "code", "id": "b", "source": "for epoch in range(3):\n    model.train()\n    for x in loader:\n"
                                                  "        model(x).mean().backward()\n        opt.step()\n"},
    ]
    (f,) = review_cells(cells, "nb.ipynb", "research", select=["TR617"]).findings
    assert (f.cell, f.line) == (2, 1)
    assert "the loop at line 3 iterates" in f.problem


TRAINER_CLASS = """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    class Trainer:
        def __init__(self, model, dataset, epochs):
            self.model, self.epochs = model, epochs
            self.sampler = DistributedSampler(dataset)
            self.loader = DataLoader(dataset, batch_size=32, sampler=self.sampler)
            self.opt = torch.optim.AdamW(model.parameters())

        def train_epoch(self, epoch):
            {INNER}
            for x, y in self.loader:
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()

        def fit(self):
            for epoch in range(self.epochs):
                {OUTER}
                self.train_epoch(epoch)
"""


@pytest.mark.parametrize("inner,outer,expected", [
    ("pass", "pass", [21]),
    ("self.sampler.set_epoch(epoch)", "pass", []),
    ("pass", "self.sampler.set_epoch(epoch)", []),
])
def test_tr617_trainer_class_epoch_loop_calls_a_method_that_iterates(inner, outer, expected):
    assert _lines(TRAINER_CLASS.replace("{INNER}", inner).replace("{OUTER}", outer), "TR617") == expected
