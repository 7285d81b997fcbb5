"""TR621 (training DataLoader does not shuffle): realistic training scripts that must stay quiet and buggy
variants that must be flagged, with the loader reaching the training loop in the usual ways."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_cells, review_source


def _findings(code: str, path: str = "case.py"):
    review = review_source(textwrap.dedent(code), path, "production", select=["TR621"])
    return [f for f in review.findings if f.rule == "TR621"]


def _lines(code: str, path: str = "case.py"):
    return [f.line for f in _findings(code, path)]


CIFAR_BUG = """
    import torch
    import torchvision
    from torch import nn
    from torch.utils.data import DataLoader

    def main(data_dir, batch_size, workers, epochs, train_tf, test_tf):
        train_set = torchvision.datasets.CIFAR10(data_dir, train=True, download=True, transform=train_tf)
        test_set = torchvision.datasets.CIFAR10(data_dir, train=False, download=True, transform=test_tf)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=False, num_workers=workers,
                                  pin_memory=True, drop_last=True)
        test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)
        model = torchvision.models.resnet18(num_classes=10).cuda()
        criterion = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for epoch in range(epochs):
            model.train()
            for x, y in train_loader:
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
                loss = criterion(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
            model.eval()
            with torch.no_grad():
                for x, y in test_loader:
                    print((model(x.cuda()).argmax(1) == y.cuda()).float().mean())
"""


def test_the_cifar_script_is_flagged_at_the_shuffle_keyword():
    found = _findings(CIFAR_BUG)
    assert [f.line for f in found] == [10]
    f = found[0]
    assert f.severity == "high" and f.category == "algorithm-correctness"
    assert "loop at line 18" in f.problem and "fixed order" in f.problem
    assert "shuffle=True" in f.fix.after and "shuffle=False" not in f.fix.after


def test_the_cifar_script_with_shuffle_is_quiet():
    assert _lines(CIFAR_BUG.replace("batch_size=batch_size, shuffle=False, num_workers=workers,\n",
                                    "batch_size=batch_size, shuffle=True, num_workers=workers,\n")) == []


GET_LOADERS = """
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    def get_loaders(root, bs):
        tf = transforms.ToTensor()
        train_set = datasets.ImageFolder(root + "/train", transform=tf)
        test_set = datasets.ImageFolder(root + "/test", transform=tf)
        train_loader = DataLoader(train_set, batch_size=bs, num_workers=4)
        test_loader = DataLoader(test_set, batch_size=bs, num_workers=4)
        return train_loader, test_loader

    def train_one_epoch(model, loader, optimizer, criterion, device):
        model.train()
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def evaluate(model, loader, device):
        model.eval()
        return sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in loader)

    def main(args, model, criterion, device):
        train_loader, test_loader = get_loaders(args.root, args.bs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        for epoch in range(args.epochs):
            train_one_epoch(model, train_loader, optimizer, criterion, device)
            print(evaluate(model, test_loader, device))
"""


def test_loader_returned_by_get_loaders_and_trained_in_a_helper():
    assert _lines(GET_LOADERS) == [10]


MODULE_SCRIPT = """
    import torch
    import torch.nn as nn
    import torch.utils.data as tud
    from tqdm import tqdm

    X_train = torch.load("x_train.pt")
    y_train = torch.load("y_train.pt")
    train_ds = tud.TensorDataset(X_train, y_train)
    train_dl = tud.DataLoader(train_ds, batch_size=256)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def train(epochs):
        for epoch in range(epochs):
            pbar = tqdm(train_dl, desc=f"epoch {epoch}")
            for xb, yb in pbar:
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    train(10)
"""


def test_module_level_loader_read_by_a_function_through_tqdm():
    assert _lines(MODULE_SCRIPT) == [10]


TRAINER_CLASS = """
    import torch
    from torch.utils.data import DataLoader

    class Trainer:
        def __init__(self, model, train_loader, lr):
            self.model = model
            self.train_loader = train_loader
            self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)

        def train_epoch(self):
            self.model.train()
            for batch in self.train_loader:
                self.optimizer.zero_grad()
                self.model(**batch).loss.backward()
                self.optimizer.step()

        def fit(self, epochs):
            for _ in range(epochs):
                self.train_epoch()

    def main(model, dataset):
        loader = DataLoader(dataset, batch_size=32, collate_fn=collate)
        Trainer(model, loader, 1e-3).fit(3)
"""


def test_loader_handed_to_a_trainer_class_of_the_document():
    assert _lines(TRAINER_CLASS) == [23]


ACCELERATE = """
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    def main(model, train_dataset, eval_dataset, args):
        accelerator = Accelerator()
        train_dataloader = DataLoader(train_dataset, collate_fn=default_data_collator, batch_size=args.bs)
        eval_dataloader = DataLoader(eval_dataset, collate_fn=default_data_collator, batch_size=args.bs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
            model, optimizer, train_dataloader, eval_dataloader)
        for epoch in range(args.epochs):
            model.train()
            for step, batch in enumerate(train_dataloader):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
"""


def test_loader_through_accelerator_prepare():
    assert _lines(ACCELERATE) == [8]


LIGHTNING = """
    import lightning as L
    from torch.utils.data import DataLoader

    class DataModule(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(self.train_ds, batch_size=64, num_workers=8)

        def val_dataloader(self):
            return DataLoader(self.val_ds, batch_size=64, num_workers=8)

    def main(model, train_ds):
        trainer = L.Trainer(max_epochs=5)
        trainer.fit(model, train_dataloaders=DataLoader(train_ds, batch_size=64, shuffle=False))
"""


def test_lightning_train_dataloader_hook_and_trainer_fit():
    assert _lines(LIGHTNING) == [7, 14]


ITER_NEXT = """
    import torch
    from torch.utils.data import DataLoader

    def train(model, ds, steps):
        opt = torch.optim.Adam(model.parameters())
        loader = DataLoader(ds, batch_size=16, shuffle=False, drop_last=True)
        it = iter(loader)
        for step in range(steps):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
"""


def test_iterator_and_next_inside_a_step_loop():
    assert _lines(ITER_NEXT) == [7]


# -- must stay quiet -------------------------------------------------------------------------------
DDP = """
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    def main(model, train_set, epochs):
        sampler = DistributedSampler(train_set)
        loader = DataLoader(train_set, batch_size=64, shuffle=False, sampler=sampler, num_workers=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for x, y in loader:
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()
"""

WEIGHTED = """
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    def main(model, train_set, weights):
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)
        train_loader = DataLoader(train_set, batch_size=64, sampler=sampler)
        optimizer = torch.optim.Adam(model.parameters())
        for x, y in train_loader:
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
"""

LIBRARY_PARAMETER = """
    import torch
    from torch.utils.data import DataLoader

    def fit(model, dataset, epochs, batch_size=32, shuffle=True):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)
        opt = torch.optim.Adam(model.parameters())
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()

    def make_loader(ds, train):
        return DataLoader(ds, batch_size=8, shuffle=(train and True), drop_last=train)
"""

VALIDATION = """
    import torch
    from torch.utils.data import DataLoader

    def main(model, train_set, val_set, epochs):
        train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
        val_loader = DataLoader(val_set, batch_size=256)
        opt = torch.optim.Adam(model.parameters())
        for epoch in range(epochs):
            for x, y in train_loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
            model.eval()
            with torch.no_grad():
                for x, y in val_loader:
                    model(x)
"""

TBPTT = """
    import torch
    from torch.utils.data import DataLoader

    def repackage_hidden(h):
        return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)

    def train(model, corpus, bptt, epochs):
        loader = DataLoader(corpus, batch_size=None)
        stream = DataLoader(corpus, batch_size=bptt, drop_last=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=20)
        for epoch in range(epochs):
            hidden = model.init_hidden(20)
            for data, targets in stream:
                hidden = repackage_hidden(hidden)
                optimizer.zero_grad()
                output, hidden = model(data, hidden)
                torch.nn.functional.nll_loss(output, targets).backward()
                optimizer.step()
"""

TBPTT_DETACH = """
    import torch
    from torch.utils.data import DataLoader

    def train(model, series, epochs):
        loader = DataLoader(series, batch_size=64)
        opt = torch.optim.Adam(model.parameters())
        h = torch.zeros(1, 64, 128)
        for epoch in range(epochs):
            for x, y in loader:
                h = h.detach()
                out, h = model(x, h)
                loss = ((out - y) ** 2).mean()
                opt.zero_grad(); loss.backward(); opt.step()
"""

ITERABLE = """
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class TokenStream(IterableDataset):
        def __init__(self, files):
            self.files = files
        def __iter__(self):
            for f in self.files:
                yield from read_tokens(f)

    def main(model, files):
        loader = DataLoader(TokenStream(files), batch_size=8, num_workers=4)
        opt = torch.optim.AdamW(model.parameters())
        for batch in loader:
            opt.zero_grad(); model(batch).loss.backward(); opt.step()
"""

INFERENCE_ONLY = """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    train_data = MyDataset("train.txt")
    train_loader = DataLoader(dataset=train_data, batch_size=512, shuffle=False, num_workers=10)
    model = torch.load("vae_best.pth").eval()
    features = []
    with torch.no_grad():
        for batch_idx, (img, name) in enumerate(train_loader):
            mu, logvar = model.encode(img)
            features.append(mu.cpu().numpy())
    np.save("features.npy", np.concatenate(features))
"""

FEATURE_EXTRACTION_NO_STEP = """
    import torch
    from torch.utils.data import DataLoader

    def fisher_diagonal(model, train_set, criterion):
        loader = DataLoader(train_set, batch_size=1)
        fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for x, y in loader:
            model.zero_grad()
            criterion(model(x), y).backward()
            for n, p in model.named_parameters():
                fisher[n] += p.grad.detach() ** 2
        return fisher
"""

HAND_SHUFFLED = """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    def main(model, train_set, epochs):
        opt = torch.optim.Adam(model.parameters())
        for epoch in range(epochs):
            idx = np.random.permutation(len(train_set))
            loader = DataLoader(Subset(train_set, idx), batch_size=32)
            for x, y in loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
"""

HF_PRESHUFFLED = """
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader

    def main(model, tokenizer):
        ds = load_dataset("wikitext", "wikitext-103-raw-v1", split="train").shuffle(seed=42)
        loader = DataLoader(ds, batch_size=8, collate_fn=collate)
        opt = torch.optim.AdamW(model.parameters())
        for batch in loader:
            opt.zero_grad(); model(**batch).loss.backward(); opt.step()
"""

SYNTHETIC_BENCHMARK = """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def bench(model, steps):
        x = torch.randn(4096, 3, 224, 224)
        y = torch.randint(0, 1000, (4096,))
        loader = DataLoader(TensorDataset(x, y), batch_size=64, pin_memory=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for xb, yb in loader:
            opt.zero_grad(); torch.nn.functional.cross_entropy(model(xb), yb).backward(); opt.step()
"""

FULL_BATCH = """
    import torch
    from torch.utils.data import DataLoader

    def fit(model, train_set, epochs):
        loader = DataLoader(train_set, batch_size=len(train_set))
        opt = torch.optim.LBFGS(model.parameters())
        optimizer = torch.optim.Adam(model.parameters())
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad(); model(x).sum().backward(); optimizer.step()
"""

RANDOM_GETITEM = """
    import random
    import torch
    from torch.utils.data import DataLoader, Dataset

    class PatchDataset(Dataset):
        def __init__(self, volume, n):
            self.volume, self.n = volume, n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            z = random.randrange(self.volume.shape[0] - 32)
            return self.volume[z:z + 32]

    def main(model, volume):
        loader = DataLoader(PatchDataset(volume, 10000), batch_size=16, num_workers=4)
        opt = torch.optim.Adam(model.parameters())
        for patch in loader:
            opt.zero_grad(); model(patch).mean().backward(); opt.step()
"""

TEST_TIME_ADAPTATION = """
    import torch
    from torch.utils.data import DataLoader

    def adapt(model, test_set):
        test_loader = DataLoader(test_set, batch_size=64)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for x, _ in test_loader:
            opt.zero_grad(); entropy(model(x)).backward(); opt.step()
"""

REBOUND = """
    import torch
    from torch.utils.data import DataLoader

    def main(model, train_set, args):
        loader = DataLoader(train_set, batch_size=32)
        if args.shuffle:
            loader = DataLoader(train_set, batch_size=32, shuffle=True)
        opt = torch.optim.Adam(model.parameters())
        for x, y in loader:
            opt.zero_grad(); model(x).sum().backward(); opt.step()
"""

PYG_LOADER = """
    import torch
    from torch_geometric.loader import DataLoader

    def main(model, dataset):
        loader = DataLoader(dataset, batch_size=32)
        opt = torch.optim.Adam(model.parameters())
        for data in loader:
            opt.zero_grad(); model(data).sum().backward(); opt.step()
"""

SET_GRAD_PHASES = """
    import torch
    from torch.utils.data import DataLoader

    def train_model(model, image_datasets, criterion, optimizer, num_epochs):
        dataloaders = {x: DataLoader(image_datasets[x], batch_size=4, shuffle=True) for x in ["train", "val"]}
        for epoch in range(num_epochs):
            for phase in ["train", "val"]:
                for inputs, labels in dataloaders[phase]:
                    optimizer.zero_grad()
                    with torch.set_grad_enabled(phase == "train"):
                        loss = criterion(model(inputs), labels)
                        if phase == "train":
                            loss.backward()
                            optimizer.step()
"""

QUIET = {
    "ddp": DDP, "weighted": WEIGHTED, "library-parameter": LIBRARY_PARAMETER, "validation": VALIDATION,
    "tbptt": TBPTT, "tbptt-detach": TBPTT_DETACH, "iterable": ITERABLE, "inference": INFERENCE_ONLY,
    "fisher": FEATURE_EXTRACTION_NO_STEP, "hand-shuffled": HAND_SHUFFLED, "hf-preshuffled": HF_PRESHUFFLED,
    "synthetic": SYNTHETIC_BENCHMARK, "full-batch": FULL_BATCH, "random-getitem": RANDOM_GETITEM,
    "test-time-adaptation": TEST_TIME_ADAPTATION, "rebound": REBOUND, "pyg": PYG_LOADER, "phases": SET_GRAD_PHASES,
}


@pytest.mark.parametrize("code", list(QUIET.values()), ids=list(QUIET))
def test_correct_or_deliberate_scripts_are_quiet(code):
    assert _lines(code) == []


def test_tbptt_without_carried_state_is_flagged():
    # the hidden state is reset on every batch: nothing crosses batches, so the order is not needed
    code = TBPTT_DETACH.replace("                h = h.detach()\n", "                h = torch.zeros(1, 64, 128)\n")
    assert _lines(code) == [6]


def test_rule_is_quiet_when_loop_is_under_no_grad_decorator():
    code = """
        import torch
        from torch.utils.data import DataLoader

        @torch.no_grad()
        def update_bn(model, train_set, opt):
            loader = DataLoader(train_set, batch_size=64)
            for x, _ in loader:
                model(x)
                opt.step()
    """
    assert _lines(code) == []


def test_notebook_cells_form_one_document():
    cells = [{"cell_type": "code", "source": "import torch\nfrom torch.utils.data import DataLoader\n"},
             {"cell_type": "markdown", "source": "## Data"},
             {"cell_type": "code", "source": "train_loader = DataLoader(train_ds, batch_size=32, shuffle=False)\n"},
             {"cell_type": "code", "source": "for epoch in range(5):\n    for x, y in train_loader:\n"
                                             "        optimizer.zero_grad()\n        loss_fn(model(x), y).backward()\n"
                                             "        optimizer.step()\n"}]
    found = review_cells(cells, "nb.ipynb", "research", select=["TR621"]).findings
    assert [(f.cell, f.line) for f in found if f.rule == "TR621"] == [(2, 1)]


def test_name_rebound_to_a_wrapper_or_reusing_the_dataset_name():
    code = """
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        def main(model, x_tr, y_tr, epochs):
            train_loader = WindowDataset(x_tr, y_tr)
            train_loader = DataLoader(train_loader, shuffle=False, batch_size=4)
            opt = torch.optim.Adam(model.parameters())
            for epoch in range(epochs):
                bar = tqdm(train_loader)
                for x, y in bar:
                    opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    assert _lines(code) == [8]
    rewrapped = """
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        def main(model, train_set):
            loader = DataLoader(train_set, batch_size=4)
            loader = tqdm(loader)
            opt = torch.optim.Adam(model.parameters())
            for x, y in loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    assert _lines(rewrapped) == [7]


def test_loader_replaced_in_one_branch_is_quiet():
    code = """
        import torch
        from torch.utils.data import DataLoader

        def main(model, train_set, shuffle):
            loader = DataLoader(train_set, batch_size=4)
            if shuffle:
                loader = DataLoader(train_set, batch_size=4, shuffle=True)
            opt = torch.optim.Adam(model.parameters())
            for x, y in loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    assert _lines(code) == []


def test_per_sample_optimization_over_an_ordered_loader_is_quiet():
    code = """
        import torch
        from torch.utils.data import DataLoader

        def invert(generator, images):
            loader = DataLoader(images, batch_size=1)
            latents = []
            for i, img in enumerate(loader):
                z = torch.zeros(1, 512, requires_grad=True)
                opt = torch.optim.Adam([z], lr=0.01)
                for _ in range(500):
                    opt.zero_grad(); ((generator(z) - img) ** 2).mean().backward(); opt.step()
                latents.append(z.detach())
            return latents
    """
    assert _lines(code) == []


GAN = """
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataloader = DataLoader(
        datasets.MNIST("../data", train=True, download=True, transform=transforms.ToTensor()),
        batch_size=64,
    )
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for epoch in range(200):
        for i, (imgs, _) in enumerate(dataloader):
            optimizer_G.zero_grad()
            g_loss = adversarial_loss(discriminator(generator(z)), valid)
            g_loss.backward()
            optimizer_G.step()
            optimizer_D.zero_grad()
            d_loss = (adversarial_loss(discriminator(imgs), valid) + adversarial_loss(discriminator(gen), fake)) / 2
            d_loss.backward()
            optimizer_D.step()
"""

IGNITE = """
    import torch
    from ignite.engine import create_supervised_evaluator, create_supervised_trainer
    from torch.utils.data import DataLoader

    def run(model, train_ds, val_ds, epochs):
        train_loader = DataLoader(train_ds, batch_size=64, num_workers=2)
        val_loader = DataLoader(val_ds, batch_size=256)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        trainer = create_supervised_trainer(model, optimizer, torch.nn.functional.nll_loss)
        evaluator = create_supervised_evaluator(model, metrics={})
        trainer.run(train_loader, max_epochs=epochs)
        evaluator.run(val_loader)
"""

MNIST_EXAMPLE_KWARGS = """
    import torch
    from torch.utils.data import DataLoader

    def main(args, model, dataset1, dataset2, use_cuda):
        train_kwargs = {"batch_size": args.batch_size}
        if use_cuda:
            train_kwargs.update({"num_workers": 1, "pin_memory": True, "shuffle": True})
        train_loader = DataLoader(dataset1, **train_kwargs)
        optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
        for epoch in range(1, args.epochs + 1):
            for data, target in train_loader:
                optimizer.zero_grad(); model(data).sum().backward(); optimizer.step()
"""


# pytorch/examples mnist: 'shuffle': True only in the CUDA branch, so on CPU/MPS the training loader never shuffles
@pytest.mark.parametrize("code,lines", [(GAN, [6]), (IGNITE, [7]), (MNIST_EXAMPLE_KWARGS, [9])],
                         ids=["gan", "ignite", "mnist-kwargs"])
def test_more_scripts(code, lines):
    assert _lines(code) == lines


def test_tests_and_evaluation_helpers_are_quiet():
    code = """
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def test_fit_is_deterministic(model):
            loader = DataLoader(TensorDataset(torch.arange(100.0)[:, None]), batch_size=10)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for (x,) in loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    assert _lines(code) == []
    assert _lines(code.replace("def test_fit_is_deterministic", "def fit"), path="tests/helpers.py") == []
    assert _lines(code.replace("def test_fit_is_deterministic", "def fit")) == [6]


def test_batches_matched_by_position_with_precomputed_outputs_are_quiet():
    code = """
        import torch
        from torch.utils.data import DataLoader

        def distill(student, teacher, train_set, epochs):
            loader = DataLoader(train_set, batch_size=128)
            with torch.no_grad():
                teacher_logits = [teacher(x) for x, _ in loader]
            opt = torch.optim.SGD(student.parameters(), lr=0.1)
            for epoch in range(epochs):
                for i, (x, y) in enumerate(loader):
                    loss = kd_loss(student(x), teacher_logits[i], y)
                    opt.zero_grad(); loss.backward(); opt.step()
    """
    assert _lines(code) == []
    assert _lines(code.replace("teacher_logits[i]", "teacher(x)")) == [6]


def test_subset_of_a_torchvision_set_trained_through_a_tqdm_context_manager():
    code = """
        import torch
        import torchvision
        from torch.utils.data import DataLoader, Subset
        from tqdm import tqdm

        def run(model, ds_name, n_part, batch_size, epochs, device, transform):
            if ds_name == "mnist":
                trainset = torchvision.datasets.MNIST("./data", train=True, download=True, transform=transform)
            else:
                trainset = torchvision.datasets.FashionMNIST("./data", train=True, download=True, transform=transform)
            if n_part > 0:
                trainset = Subset(trainset, range(int(len(trainset) * n_part)))
            trainloader = DataLoader(trainset, batch_size=batch_size, shuffle=False)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            criterion = torch.nn.CrossEntropyLoss()
            for epoch in range(epochs):
                model.train()
                with tqdm(trainloader) as pbar:
                    for i, (images, labels) in enumerate(pbar):
                        optimizer.zero_grad()
                        loss = criterion(model(images.to(device)), labels.to(device))
                        loss.backward()
                        optimizer.step()
                        pbar.set_postfix(loss=loss.item())
    """
    assert _lines(code) == [14]


def test_positional_shuffle_false_is_reported_and_fixed_in_place():
    code = """
        import torch
        from torch.utils.data import DataLoader

        def main(model, train_set):
            loader = DataLoader(train_set, 32, False, num_workers=2)
            opt = torch.optim.Adam(model.parameters())
            for x, y in loader:
                opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    (f,) = _findings(code)
    assert f.line == 6 and f.fix.after.startswith("DataLoader(train_set, 32, True, num_workers=2)")
    assert _lines(code.replace("32, False,", "32, False, None,")) == [6]
    assert _lines(code.replace("32, False,", "32, False, RandomSampler(train_set),")) == []


def test_stateful_model_reset_once_per_epoch_is_quiet():
    code = """
        import torch
        from torch.utils.data import DataLoader

        def train(model, series, epochs):
            loader = DataLoader(series, batch_size=1)
            opt = torch.optim.Adam(model.parameters())
            for epoch in range(epochs):
                model.reset_hidden_state()
                for x, y in loader:
                    opt.zero_grad(); ((model(x) - y) ** 2).mean().backward(); opt.step()
    """
    assert _lines(code) == []
    per_batch = code.replace("                model.reset_hidden_state()\n", "").replace(
        "opt.zero_grad();", "model.reset_hidden_state(); opt.zero_grad();")
    assert _lines(per_batch) == [6]


def test_loader_handed_to_a_method_of_a_trainer_object():
    code = """
        import torch
        from torch.utils.data import DataLoader

        class Trainer:
            def __init__(self, model, lr):
                self.model = model
                self.opt = torch.optim.Adam(model.parameters(), lr=lr)

            def fit(self, loader, epochs):
                for _ in range(epochs):
                    for x, y in loader:
                        self.opt.zero_grad()
                        torch.nn.functional.cross_entropy(self.model(x), y).backward()
                        self.opt.step()

        def main(model, train_set):
            trainer = Trainer(model, 1e-3)
            trainer.fit(DataLoader(train_set, batch_size=32), epochs=10)
    """
    assert _lines(code) == [19]
