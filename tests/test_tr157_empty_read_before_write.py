"""TR157 (torch.empty memory read before it is written): cases beyond the rule's own examples."""
from __future__ import annotations

import pytest

from torchreview_lab.engine import review_cells, review_source
from torchreview_lab.fixes import fixed_sources


def _tr157(code: str):
    return [f for f in review_source(code, "example.py", "research", select=["TR157"]).findings]


QUIET = {
    "zeros": "import torch\ndef f(xs):\n    acc = torch.zeros(3)\n    for x in xs:\n        acc += x\n    return acc\n",
    "if-else-init": "import torch\ndef f(xs, init):\n    acc = torch.empty(4)\n    if init is None:\n        acc.zero_()\n"
                    "    else:\n        acc.copy_(init)\n    for x in xs:\n        acc.add_(x)\n    return acc\n",
    "elif-init": "import torch\ndef f(a, b, x):\n    acc = torch.empty(4)\n    if a:\n        acc.zero_()\n    elif b:\n"
                 "        acc.fill_(1)\n    else:\n        acc.copy_(x)\n    acc += 1\n    return acc\n",
    "nn-init": "import torch\nfrom torch import nn\ndef f(n, m):\n    w = torch.empty(n, m)\n    nn.init.kaiming_uniform_(w)\n    return w @ w.T\n",
    "fill-then-accumulate": "import torch\ndef f(xs):\n    acc = torch.empty(3)\n    acc.fill_(0)\n    for x in xs:\n        acc += x\n    return acc\n",
    "slice-write": "import torch\ndef f(xs):\n    acc = torch.empty(3)\n    acc[:] = 0\n    for x in xs:\n        acc += x\n    return acc\n",
    "random-init": "import torch\ndef f(n):\n    w = torch.empty(n, n, device='cuda').normal_(0, 0.02)\n    b = torch.empty(n)\n"
                   "    b.uniform_(-1, 1)\n    return w + b\n",
    "shape-reads-then-fill": "import torch\ndef f(x):\n    out = torch.empty_like(x)\n    print(out.shape, out.dtype, out.size(0))\n"
                             "    for i in range(x.shape[0]):\n        out[i] = x[i] * 2\n    return out + 1\n",
    "zero-size": "import torch\nacc = torch.empty(0, 4)\nfor x in xs:\n    acc = acc + x.sum()\n",
    "returned-buffer": "import torch\ndef alloc(n):\n    buf = torch.empty(n).pin_memory()\n    return buf\n",
    "identity-check": "import torch\ndef f(w, n):\n    dw = None\n    if w is not None:\n        dw = torch.empty(n)\n"
                      "        launch(dw is not None, dw)\n    return dw\n",
    "guarded-recurrence": "import torch\ndef f(x, a):\n    out = torch.empty_like(x)\n    for t in range(len(x)):\n"
                          "        out[t] = out[t - 1] * a if t > 0 else x[0]\n    return out\n",
    "first-iteration-branch": "import torch\ndef f(x, a):\n    out = torch.empty_like(x)\n    for t in range(len(x)):\n"
                              "        if t > 0:\n            h = out[t - 1] * a\n        else:\n            h = x[0]\n        out[t] = h\n    return out\n",
    "torch-fill": "import torch\ndef f(n, v):\n    out = torch.empty(n)\n    out = torch.fill(out, v)\n    return out * 2\n",
    "split-views": "import torch\ndef f(n, sizes, xs):\n    buf = torch.empty(n)\n    parts = torch.split(buf, sizes)\n"
                   "    torch._foreach_copy_(parts, xs)\n    return buf.sum()\n",
    "view-write": "import torch\ndef f(x):\n    buf = torch.empty(4, 4)\n    buf.view(-1).copy_(x)\n    return buf.sum()\n",
    "collective": "import torch\nimport torch.distributed as dist\ndef f(x, world):\n    out = torch.empty(world * x.numel())\n"
                  "    dist.all_gather_into_tensor(out, x)\n    return out.view(world, -1).sum(0)\n",
    "triton-kernel": "import torch\ndef f(x):\n    out = torch.empty_like(x)\n    grid = (x.numel() // 128,)\n"
                     "    add_kernel[grid](x, out, x.numel(), BLOCK=128)\n    return out\n",
    "with-no-grad-write": "import torch\ndef f(model, xs):\n    acc = torch.empty(3)\n    with torch.no_grad():\n"
                          "        acc.copy_(model(xs[0]))\n        for x in xs[1:]:\n            acc += model(x)\n    return acc\n",
    "try-write": "import torch\ndef f(x):\n    acc = torch.empty(3)\n    try:\n        acc.copy_(x)\n    except RuntimeError:\n"
                 "        acc.zero_()\n    acc += 1\n    return acc\n",
    "closure": "import torch\ndef f(xs):\n    acc = torch.empty(3)\n    def reset():\n        acc.zero_()\n    reset()\n"
               "    for x in xs:\n        acc += x\n    return acc\n",
    "rebound": "import torch\ndef f(x):\n    acc = torch.empty(3)\n    acc = x.clone()\n    acc += 1\n    return acc\n",
    "alias-row-write": "import torch\ndef f(xs):\n    out = torch.empty(len(xs), 3)\n    for i, x in enumerate(xs):\n"
                       "        row = out[i]\n        row.copy_(x)\n    return out.sum()\n",
    "while-write": "import torch\ndef f(it):\n    acc = torch.empty(3)\n    i = 0\n    while i < 3:\n        acc[i] = next(it)\n"
                   "        i += 1\n    return acc.sum()\n",
    "out-kwarg": "import torch\ndef f(x, n):\n    buf = torch.empty(n)\n    torch.cumsum(x, 0, out=buf)\n    return buf[-1]\n",
    "other-receiver-empty": "import numpy as np\ndef f(n):\n    a = np.empty(n)\n    a += 1\n    return a\n",
    "numpy-view-filled": "import torch\ndef f(fp, n):\n    buf = torch.empty(n, dtype=torch.uint8)\n    fp.readinto(buf.numpy())\n"
                         "    return buf.float().mean()\n",
    "data-ptr-filled": "import torch\ndef f(lib, n):\n    out = torch.empty(n)\n    lib.fill(out.data_ptr(), n)\n    out += 1\n    return out\n",
    "addmm-beta-zero": "import torch\ndef f(a, b):\n    c = torch.empty(a.shape[0], b.shape[1])\n    c.addmm_(a, b, beta=0)\n    return c.sum()\n",
    "semicolon": "import torch\ndef f(x):\n    acc = torch.empty(3); acc.zero_()\n    acc += x\n    return acc\n",
}

FLAGGED = {
    # name: (code, line of the finding)
    "notebook-module-scope": ("import torch\ncounts = torch.empty(10, device='cuda')\nfor y in labels:\n    counts[y] += 1\n"
                              "print(counts / counts.sum())\n", 2),
    "empty-strided-if-branch": ("import torch\nfrom torch import empty_strided\ndef f(x, mask):\n    s = empty_strided((4, 4), (1, 4))\n"
                                "    if mask is not None:\n        s.mul_(mask)\n    return torch.max(s)\n", 4),
    "moved-to-device": ("import torch\ndef f(xs, dev):\n    acc = torch.empty(3).to(dev)\n    for x in xs:\n        acc += x\n"
                        "    return acc\n", 3),
    "view-accumulate": ("import torch\ndef f(x):\n    acc = torch.empty(2, 2)\n    acc.view(-1).add_(x)\n    return acc\n", 3),
    "torch-add-into-itself": ("import torch\ndef f(x):\n    acc = torch.empty(3)\n    torch.add(acc, x, out=acc)\n    return acc\n", 3),
    "no-grad-confusion": ("import torch\ndef f(model, loader):\n    cm = torch.empty(4, 4, dtype=torch.long)\n    with torch.no_grad():\n"
                          "        for x, y in loader:\n            p = model(x).argmax(1)\n            for t, q in zip(y, p):\n"
                          "                cm[t, q] += 1\n    return cm\n", 3),
    "printed": ("import torch\ndef f(n):\n    acc = torch.empty(n)\n    print(acc.sum())\n", 3),
    "functional": ("import torch\nimport torch.nn.functional as F\ndef f(n):\n    scores = torch.empty(n, n)\n"
                   "    return F.softmax(scores, -1)\n", 4),
    "after-shape-read": ("import torch\ndef f(x):\n    acc = torch.empty_like(x)\n    n = acc.shape[0]\n    acc += n\n    return acc\n", 3),
    "while-accumulate": ("import torch\ndef f(it):\n    acc = torch.empty(3)\n    while True:\n        x = next(it, None)\n"
                         "        if x is None:\n            break\n        acc.add_(x)\n    return acc\n", 3),
    "one-line-loop": ("import torch\ndef f(xs):\n    acc = torch.empty(3)\n    for x in xs: acc += x\n    return acc\n", 3),
    "read-as-argument": ("import torch\ndef f(x):\n    acc = torch.empty(3)\n    x.copy_(acc)\n    return x\n", 3),
    "element-read-rhs": ("import torch\ndef f(T):\n    h = torch.empty(T)\n    for t in range(1, T):\n        h[t] = h[t - 1] + 1\n"
                         "    return h\n", 3),
    "as-keyword-size": ("import torch as th\ndef f(n):\n    m = th.empty(size=(n, n))\n    return m.mean()\n", 3),
}


@pytest.mark.parametrize("name", sorted(QUIET))
def test_quiet(name):
    assert not _tr157(QUIET[name]), name


@pytest.mark.parametrize("name", sorted(FLAGGED))
def test_flagged(name):
    code, line = FLAGGED[name]
    assert [f.line for f in _tr157(code)] == [line], name


def test_autofix_keeps_arguments_and_skips_empty_strided():
    code = "import torch\ndef f(xs):\n    acc = torch.empty(3).to('cuda')\n    for x in xs:\n        acc += x\n    return acc\n"
    review = review_source(code, "example.py", "research", select=["TR157"])
    assert fixed_sources(review.documents[0], review)[None] == code.replace("torch.empty(", "torch.zeros(")
    strided = _tr157(FLAGGED["empty-strided-if-branch"][0])
    assert not strided[0].autofix and strided[0].fix.after == "empty_strided((4, 4), (1, 4)).zero_()"


def test_finding_points_at_the_allocation_in_a_notebook_cell():
    cells = [{"cell_type": "code", "source": "import torch\nB, D = 8, 4\n"},
             {"cell_type": "markdown", "source": "accumulate"},
             {"cell_type": "code", "source": "total = torch.empty(B, D)\nfor step in range(10):\n    total += torch.randn(B, D)\n"}]
    found = [f for f in review_cells(cells, "nb.ipynb", "research", select=["TR157"]).findings]
    assert [(f.cell, f.line, f.column) for f in found] == [(2, 1, 9)]
    assert "its first use, `total += torch.randn(B, D)`, reads" in found[0].problem
