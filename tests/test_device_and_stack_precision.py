"""TR401 / TR402 / TR103 precision: CPU-by-design data-pipeline code, 0-dim factories, factories that
never meet an input tensor, torchrun/DDP device selection, and dynamic-programming tables stay quiet;
the real device bugs and per-step collect-then-stack stay flagged."""
from pathlib import Path

import pytest

from torchreview_lab.engine import review_cells, review_path, review_source

ROOT = Path(__file__).resolve().parents[1]


def _found(code, rule, standard="research"):
    return [(f.line, f.severity) for f in review_source(code, "t.py", standard, select=[rule]).findings]


# ---------------------------------------------------------------- TR401 -----------------------------------
COLLATE_BODY = ("    feats, labels = zip(*batch)\n"
                "    lens = torch.tensor([f.size(0) for f in feats], dtype=torch.long)\n"
                "    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)\n"
                "    mask = torch.arange(x.size(1))[None, :] < lens[:, None]\n"
                "    return {'x': x, 'lens': lens, 'mask': mask, 'y': torch.tensor(labels)}\n")


@pytest.mark.parametrize("code", [
    # passed as collate_fn= (directly, through functools.partial, as a bound method, as a callable object)
    "import torch\nfrom torch.utils.data import DataLoader\n"
    "def pad_batch(batch: list[tuple[torch.Tensor, torch.Tensor]]):\n" + COLLATE_BODY +
    "def make(ds):\n    return DataLoader(ds, batch_size=4, collate_fn=pad_batch)\n",
    "import functools\nimport torch\nfrom torch.utils.data import DataLoader\n"
    "def pad_batch(batch: list, pad_id: int):\n" + COLLATE_BODY +
    "loader = DataLoader([], collate_fn=functools.partial(pad_batch, pad_id=0))\n",
    "import torch\nfrom torch.utils.data import DataLoader\nclass Collator:\n"
    "    def __call__(self, batch: list[torch.Tensor]):\n" + COLLATE_BODY.replace("\n    ", "\n        ").replace(
        "    feats", "        feats", 1) +
    "loader = DataLoader([], collate_fn=Collator())\n",
    # a function named as a collate function that takes a list of samples (defined in a library module)
    "import torch\ndef speech_collate(batch: list[torch.Tensor]):\n" + COLLATE_BODY,
    # worker_init_fn
    "import torch\nfrom torch.utils.data import DataLoader\ndef seed_worker(worker_id, x: torch.Tensor = None):\n"
    "    g = torch.randint(0, 2**31, (1,))\n    return x + g\n"
    "loader = DataLoader([], worker_init_fn=seed_worker)\n",
    # Dataset.__getitem__, a helper it calls, IterableDataset.__iter__, a local Dataset subclass
    "import torch\nfrom torch.utils.data import Dataset\nclass Frames(Dataset):\n"
    "    def __getitem__(self, i):\n        x = self.feats[i]\n        return self._pad(x)\n"
    "    def _pad(self, x: torch.Tensor):\n        return torch.cat([x, torch.zeros(3, x.size(1))])\n",
    "import torch\nimport torch.utils.data as tud\nclass Stream(tud.IterableDataset):\n"
    "    def __iter__(self):\n        for x in self.source:\n            yield x * torch.ones(x.shape[0])\n",
    "import torch\nfrom torch.utils.data import Dataset\nclass Base(Dataset):\n    pass\nclass Child(Base):\n"
    "    def __getitem__(self, i):\n        x = self.data[i]\n        return x + torch.randn(x.shape)\n",
    # new tensors that only meet each other / sizes / never leave the function
    "import torch\ndef stats(x: torch.Tensor):\n    idx = torch.arange(x.size(0)) * x.size(1)\n"
    "    print(idx.max())\n    return x.mean()\n",
    "import torch\ndef init(x: torch.Tensor):\n    counts = torch.zeros(10)\n    counts[3] += 1\n    return x * 2\n",
    # a helper returning a new tensor: its caller decides the device
    "import torch\ndef make_mask(x: torch.Tensor):\n    return torch.ones(x.shape[0], dtype=torch.bool)\n",
    # normal(mean, std) with a tensor std, torch.tensor(t): the result takes the input's device
    "import torch\ndef noisy(x: torch.Tensor, std: torch.Tensor):\n    return x + torch.normal(0.0, std)\n",
    # host code: the expression ends in .numpy(); an input the function itself turns into numpy
    "import torch\ndef cdf(p: torch.Tensor):\n    c = torch.cat([torch.zeros(1), p.cumsum(0)]).numpy()\n    return c\n",
    "import torch\ndef f(freq: torch.Tensor):\n    f_np = freq.numpy()\n    return freq * torch.ones(3), f_np\n",
    # an int from a tuple unpacked out of a non-torch call is not an input tensor
    "import torch\ndef f(mask: torch.Tensor, inputs):\n    mask, n = build_mask(mask, inputs)\n"
    "    ks = torch.arange(n, dtype=torch.float)\n    return ks * (n - ks)\n",
    # moved where it meets the input; an input brought to the host first; the index of __getitem__
    "import torch\ndef f(x: torch.Tensor, seqs):\n    lens = torch.tensor([len(s) for s in seqs])\n"
    "    pos = torch.arange(x.shape[1], device=x.device)\n    return pos[None] < lens.to(x.device)[:, None]\n",
    "import torch\ndef pool(emb: torch.Tensor, labels):\n    h = emb.cpu()\n    sums = torch.zeros(3, h.shape[1])\n"
    "    sums.index_add_(0, torch.as_tensor(labels), h)\n    return sums.to(emb.device)\n",
    "import torch\nclass View:\n    def __getitem__(self, idx):\n        rows = idx[-2]\n"
    "        return self.data[torch.arange(self.n)[rows] * 2]\n",
    # the new tensor stored into an input container / written into an input tensor (a copy); identity tests
    "import torch\ndef load(state_dict: dict, meta):\n    for k, v in meta.items():\n        v = torch.empty(v.size)\n"
    "        state_dict[k] = v\n",
    "import torch\ndef f(x: torch.Tensor):\n    x[0] = torch.zeros(x.shape[1])\n    return x\n",
    "import torch\ndef f(data: torch.Tensor = None):\n    if data is None:\n        data = torch.empty(0)\n"
    "    if type(data) is torch.Tensor:\n        return data\n",
    # a str-annotated parameter is not a tensor, whatever torch call it is passed to
    "import torch\nimport torch.distributed.rpc as rpc\n@torch.jit.script\ndef call(dst: str):\n"
    "    args = (torch.tensor([1, 1]), 1)\n    fut = rpc.rpc_async(dst, f, args)\n    return fut.wait()\n",
    # nn.Module constructor: built on the CPU, moved with .to(device)
    "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, init: torch.Tensor):\n"
    "        super().__init__()\n        self.w = nn.Parameter(init * torch.ones(init.shape))\n",
    # a 0-dim accumulator handed to a helper (the c2 brute-force test): not an input-meeting tensor here
    "import torch\ndef brute(em: torch.Tensor, terms):\n    rec(0, None, torch.zeros((), dtype=torch.float64))\n"
    "    return torch.logsumexp(torch.stack(terms), dim=0)\n",
])
def test_tr401_quiet(code):
    assert _found(code, "TR401") == []


@pytest.mark.parametrize("code, line, severity", [
    # meets an input tensor: arithmetic, indexing with, index into, cat, method, write into
    ("import torch\ndef f(x: torch.Tensor):\n    m = torch.zeros(x.shape)\n    return x * m\n", 3, "high"),
    # indexing a CUDA tensor with a CPU index works (one host->device copy): low; the reverse fails
    ("import torch\ndef gold(em: torch.Tensor, tags):\n    b = torch.arange(em.size(0))\n"
     "    return em[b, 0, tags[:, 0]]\n", 3, "low"),
    ("import torch\ndef f(x: torch.Tensor):\n    return x[torch.arange(x.size(0)), 0]\n", 3, "low"),
    # x[perm] * y: perm only picks rows, the product meets x and y (both inputs)
    ("import torch\ndef f(x: torch.Tensor, y: torch.Tensor):\n    perm = torch.randperm(x.size(0))\n"
     "    return x[perm] * y\n", 3, "low"),
    ("import torch\ndef f(x: torch.Tensor, idx: torch.Tensor):\n    table = torch.randn(10, 4)\n"
     "    return table[idx]\n", 3, "high"),
    ("import torch\ndef f(x: torch.Tensor):\n    counts = torch.zeros(10)\n    counts.scatter_add_(0, x.long(), x)\n"
     "    return x\n", 3, "high"),
    ("import torch\ndef f(x: torch.Tensor, lens: torch.Tensor):\n"
     "    mask = torch.arange(x.size(1))[None, :] < lens[:, None]\n    return x.masked_fill(~mask[..., None], 0)\n",
     3, "high"),
    ("import torch\ndef f(x: torch.Tensor):\n    out = torch.zeros(x.size(0), 4)\n    out.index_add_(0, x.long(), x)\n"
     "    return out\n", 3, "high"),
    ("import torch\ndef f(x: torch.Tensor):\n    out = torch.empty(3, 4)\n    for t in range(3):\n"
     "        out[t] = x[t] * 2\n    return out\n", 3, "high"),
    # returned from a forward on the default device: medium
    ("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n"
     "        return torch.ones(x.shape[0], dtype=torch.bool)\n", 5, "medium"),
    # a CPU-built bias meets the input through an F.* call / a pairing method
    ("import torch\nimport torch.nn.functional as F\ndef f(logits: torch.Tensor, labels):\n"
     "    return F.cross_entropy(logits, torch.tensor(labels))\n", 4, "high"),
    # 0-dim: low in every standard
    ("import torch\ndef f(x: torch.Tensor):\n    return x + torch.zeros((), dtype=torch.float64)\n", 3, "low"),
    ("import torch\ndef f(x: torch.Tensor):\n    return torch.maximum(x, torch.tensor(0.0))\n", 3, "low"),
    ("import torch\ndef f(x: torch.Tensor):\n    acc = torch.full([], 1.0)\n    return acc * x\n", 3, "low"),
])
def test_tr401_flagged(code, line, severity):
    assert _found(code, "TR401") == [(line, severity)]


@pytest.mark.parametrize("standard", ["research", "production"])
def test_tr401_zero_dim_is_low_in_every_standard(standard):
    code = "import torch\ndef f(x: torch.Tensor):\n    s = torch.zeros(())\n    s = s + x.sum()\n    return s\n"
    assert _found(code, "TR401", standard) == [(3, "low")]


def test_tr401_collate_detection_needs_the_call_site_or_a_list_of_samples():
    # not passed to a DataLoader, not iterating its input: an ordinary function, still flagged
    code = "import torch\ndef collate_scores(x: torch.Tensor):\n    return x * torch.ones(x.shape[0])\n"
    assert _found(code, "TR401") == [(3, "high")]
    # a Dataset method that is not an item producer nor called by one stays checked
    code = ("import torch\nfrom torch.utils.data import Dataset\nclass D(Dataset):\n"
            "    def normalise(self, x: torch.Tensor):\n        return x - torch.ones(x.shape[1])\n")
    assert _found(code, "TR401") == [(5, "high")]


def test_tr401_demo_notebook_keeps_its_finding():
    r = review_path(ROOT / "notebooks" / "semimarkov_demo.ipynb", "research")
    assert [(f.cell, f.line, f.severity) for f in r.findings if f.rule == "TR401"] == [(5, 4, "high")]


def test_tr401_collate_in_another_notebook_cell():
    cells = [{"cell_type": "code", "source": "import torch\nfrom torch.utils.data import DataLoader\n"},
             {"cell_type": "code", "source": "def pad(batch: list[torch.Tensor]):\n"
                                             "    lens = torch.tensor([len(b) for b in batch])\n"
                                             "    x = torch.nn.utils.rnn.pad_sequence(batch)\n"
                                             "    return x, torch.arange(x.size(0))[:, None] < lens\n"},
             {"cell_type": "code", "source": "dl = DataLoader(ds, collate_fn=pad)\n"}]
    assert review_cells(cells, "nb.ipynb", "research", select=["TR401"]).findings == []


# ---------------------------------------------------------------- TR402 -----------------------------------
@pytest.mark.parametrize("code", [
    "import os\nimport torch\nimport torch.distributed as dist\ndef setup():\n    dist.init_process_group('nccl')\n"
    "    local_rank = int(os.environ['LOCAL_RANK'])\n    torch.cuda.set_device(local_rank)\n"
    "    return dist.get_rank(), torch.device('cuda', local_rank)\n",
    "import os\nimport torch\ndevice = torch.device('cuda', int(os.environ['LOCAL_RANK']))\n",
    "import torch\ndef run(rank):\n    device = torch.device(f'cuda:{rank}')\n    return torch.zeros(3, device=device)\n",
    "import torch\ndef run(rank):\n    return torch.device(type='cuda', index=rank)\n",
    "import torch\ndef devices():\n    return [torch.device('cuda', i) for i in range(torch.cuda.device_count())]\n",
    "import torch\ndef is_gpu(self):\n    return self.device == torch.device('cuda')\n",
    "import torch\ndef test_on_gpu(x):\n    if not torch.cuda.is_available():\n        return\n    assert x.to('cuda').is_cuda\n",
    "import pytest\nimport torch\ndef test_on_gpu(x):\n    if not torch.cuda.is_available():\n        pytest.skip('needs a GPU')\n"
    "    assert x.cuda().is_cuda\n",
    "import unittest\nimport torch\nclass T(unittest.TestCase):\n"
    "    @unittest.skipIf(not torch.cuda.is_available(), 'no gpu')\n    def test_gpu(self):\n"
    "        x = torch.ones(2).cuda()\n",
])
def test_tr402_quiet(code):
    assert _found(code, "TR402", "production") == []


@pytest.mark.parametrize("code, line", [
    ("import torch\ndevice = torch.device('cuda')\n", 2),
    ("import torch\ndevice = torch.device('cuda:0')\n", 2),
    ("import torch\ndevice = torch.device('cuda', 0)\n", 2),
    ("import torch\ndef f(x):\n    return x.cuda()\n", 3),
    ("import torch\ndef f(x):\n    return x.cuda(1)\n", 3),
    ("import torch\ndef f(x):\n    return torch.ones(3, device='cuda:0') + x\n", 3),
    # an early return that is not about the GPU does not guard
    ("import torch\ndef f(x):\n    if x is None:\n        return\n    return x.to('cuda')\n", 5),
    # the local_rank idiom does not excuse a later bare .cuda()
    ("import os\nimport torch\nrank = int(os.environ['LOCAL_RANK'])\ndev = torch.device('cuda', rank)\n"
     "model = torch.nn.Linear(2, 2).cuda()\n", 5),
])
def test_tr402_flagged(code, line):
    assert [ln for ln, _ in _found(code, "TR402", "production")] == [line]


# ---------------------------------------------------------------- TR103 -----------------------------------
SEMI_MARKOV = (
    "import torch\ndef log_partition(emissions, dur, trans, K):\n    B, T, C = emissions.shape\n"
    "    cum = emissions.cumsum(1)\n    alphas = [cum.new_full((B, C), -1e4)]\n"
    "    for t in range(1, T + 1):\n        cands = []\n        for k in range(1, min(K, t) + 1):\n"
    "            s = t - k\n            prev = torch.logsumexp(alphas[s].unsqueeze(2) + trans, dim=1)\n"
    "            cands.append(prev + cum[:, t - 1] + dur[k - 1])\n"
    "        alphas.append(torch.logsumexp(torch.stack(cands, dim=0), dim=0))\n"
    "    table = torch.stack(alphas, dim=1)\n    return table\n")


@pytest.mark.parametrize("code", [
    SEMI_MARKOV,
    # an RNN unrolled by hand reads the previous entry
    "import torch\ndef unroll(cell, x):\n    hs = [x.new_zeros(x.size(0), 8)]\n    for t in range(x.size(1)):\n"
    "        hs.append(cell(x[:, t], hs[-1]))\n    return torch.stack(hs[1:], dim=1)\n",
    # reads a window of earlier entries as a slice
    "import torch\ndef f(x, K):\n    a = [x[:, 0]]\n    for n in range(1, x.shape[1]):\n"
    "        a.append(torch.stack(a[max(0, n - K):]).sum(0) + x[:, n])\n    return torch.stack(a, 1)\n",
    # chunked: one entry per chunk of rows
    "import torch\ndef scores(model, x):\n    out = []\n    for i in range(0, x.shape[0], 256):\n"
    "        out.append(model(x[i:i + 256]))\n    return torch.cat(out)\n",
    # len() of a Python list
    "import torch\ndef f(model, pairs):\n    out = []\n    for i in range(len(pairs)):\n"
    "        out.append(model(pairs[i]))\n    return torch.cat(out)\n",
])
def test_tr103_quiet(code):
    assert _found(code, "TR103") == []


@pytest.mark.parametrize("code, line", [
    # per-step outputs collected then stacked and reduced: a streaming sum would do
    ("import torch\ndef f(x):\n    T = x.shape[1]\n    outs = []\n    for t in range(T):\n"
     "        outs.append((x[:, t] ** 2).sum(-1))\n    return torch.stack(outs, 1).sum(1)\n", 7),
    # len() of a tensor parameter
    ("import torch\ndef f(x: torch.Tensor):\n    outs = []\n    for t in range(len(x)):\n        outs.append(x[t].exp())\n"
     "    return torch.stack(outs)\n", 6),
])
def test_tr103_flagged(code, line):
    assert [ln for ln, _ in _found(code, "TR103")] == [line]
