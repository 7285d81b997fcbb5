"""Cases for TR307 (requires_grad tensor made a non-leaf) and TR612 (softmax without dim) beyond the rules' examples."""
from __future__ import annotations

import pytest

from torchreview_lab.engine import review_source
from torchreview_lab.fixes import fixed_sources

TR307_FLAGGED = {
    "param-group": "import math\nimport torch as th\nfrom torch.optim import Adam\ndef init(n, m):\n"
                   "    w = th.randn(n, m, requires_grad=True) / math.sqrt(n)\n"
                   "    return w, Adam(params=[{'params': [w], 'lr': 1e-3}])\n",
    "view-grad-reset": "import torch\ndef step(f):\n    k = torch.randn(6, requires_grad=True).view(2, 3)\n"
                       "    f(k).backward()\n    g = k.grad\n    k.grad.zero_()\n    return g\n",
    "float-of-float64": "import torch\nw = torch.randn(3, dtype=torch.float64, requires_grad=True).float()\n"
                         "opt = torch.optim.SGD([w], lr=1)\n",
    "to-float64": "import torch\nw = torch.randn(3, requires_grad=True).to(torch.float64)\nprint(w.grad)\n",
    "cuda-index": "import torch\nw = torch.randn(3, requires_grad=True).cuda(0)\nprint(w.grad)\n",
    "type-cuda": "import torch\nw = torch.randn(3, requires_grad=True).type(torch.cuda.FloatTensor)\nprint(w.grad)\n",
    "negated": "import torch\nw = -torch.ones(3, requires_grad=True)\nopt = torch.optim.Adam((w,))\n",
    "scale-first-via-list": "import torch\nw = 0.01 * torch.randn(3, requires_grad=True)\nparams = [w]\n"
                            "opt = torch.optim.Adam(params)\n",
    "requires-grad-again": "import torch\nw = (torch.randn(3, requires_grad=True) * 0.01).requires_grad_()\nprint(w.grad)\n",
    "like-factory": "import torch\ndef f(x):\n    w = torch.zeros_like(x, requires_grad=True) + 1\n"
                    "    return torch.optim.SGD([w], 0.1)\n",
    "new-zeros": "import torch\ndef f(x):\n    w = x.new_zeros(3, requires_grad=True) * 2\n    return w.grad\n",
    "global-in-function": "import torch\nw = torch.randn(3, requires_grad=True) * 2\ndef train():\n    w.grad = None\n",
    "self-grad": "import torch\nclass T:\n    def __init__(self):\n        self.w = torch.randn(3, requires_grad=True).cuda()\n"
                 "    def step(self):\n        self.w.grad.zero_()\n",
    "scaled-by-argument": "import torch\ndef make(scale):\n    w = torch.randn(3, dtype=torch.float32, requires_grad=True)"
                          ".double() * scale\n    return torch.optim.SGD([w], lr=0.1)\n",
}
TR307_QUIET = {
    "float-on-float32": "import torch\nw = torch.randn(3, requires_grad=True).float()\nprint(w.grad)\n",
    "cpu-on-cpu": "import torch\nw = torch.randn(3, requires_grad=True).cpu().to(torch.float32)\nprint(w.grad)\n",
    "contiguous": "import torch\nw = torch.randn(3, requires_grad=True).contiguous()\nprint(w.grad)\n",
    "default-dtype-double": "import torch\ntorch.set_default_dtype(torch.float64)\nw = torch.randn(3, requires_grad=True)"
                            ".double()\nprint(w.grad)\n",
    "like-unknown-dtype": "import torch\ndef f(x):\n    w = torch.zeros_like(x, requires_grad=True).float()\n    return w.grad\n",
    "retain-grad": "import torch\nw = torch.randn(3, requires_grad=True) * 2\nw.retain_grad()\nw.sum().backward()\nprint(w.grad)\n",
    "wrapped-later": "import torch\nw = torch.randn(3, requires_grad=True) * 2\np = torch.nn.Parameter(w)\n"
                     "opt = torch.optim.SGD([p], 1)\n",
    "wrapped-in-optimizer": "import torch\nw = torch.randn(3, requires_grad=True) * 2\n"
                            "opt = torch.optim.SGD([torch.nn.Parameter(w)], 1)\n",
    "shadowed-in-function": "import torch\nw = torch.randn(3, requires_grad=True) * 2\ndef g(w):\n    return w.grad\n",
    "numpy": "import numpy as np\nw = np.zeros(3, requires_grad=True) * 2\nprint(w.grad)\n",
    "not-a-module": "import torch\nclass T:\n    def __init__(self):\n        self.w = torch.randn(3, requires_grad=True).cuda()\n",
    "module-forward-state": "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                            "        self.h = torch.zeros(3, requires_grad=True).to(x.device)\n        return x\n",
    "reassigned-as-parameter": "import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                               "        self.w = torch.randn(3, requires_grad=True) * 0.1\n        self.w = torch.nn.Parameter(self.w)\n",
    "scheduler": "import torch\nw = torch.randn(3, requires_grad=True) * 2\ns = torch.optim.lr_scheduler.StepLR(w, 1)\n",
    "autograd-grad": "import torch\nx = torch.randn(3, requires_grad=True) * 2\ng, = torch.autograd.grad(x.sum(), [x])\n",
    "detached": "import torch\nw = (torch.randn(3, requires_grad=True) * 2).detach()\nprint(w.grad)\n",
    "same-device-variable": "import torch\ndef f(d):\n    w = torch.randn(3, device=d, requires_grad=True).to(d)\n    return w.grad\n",
    "dtype-of-other": "import torch\ndef f(x):\n    w = torch.randn(3, requires_grad=True).to(x.dtype)\n    return w.grad\n",
}
TR612_FLAGGED = {
    "none-keyword": "import torch.nn.functional as F\ny = F.softmax(x, dim=None)\n",
    "from-import-module": "from torch.nn import Softmax\nact = Softmax()\n",
    "qualified-module": "import torch.nn as nn\nact = nn.modules.activation.Softmin()\n",
}
TR612_QUIET = {
    "positional-module": "import torch.nn as nn\nm = nn.Softmax(1)\n",
    "class-reference": "import torch.nn as nn\nact = nn.Softmax\n",
    "subclass": "import torch.nn as nn\nclass S(nn.Softmax):\n    pass\ns = S()\n",
    "scipy": "from scipy.special import softmax\ny = softmax(x)\n",
    "local-class": "class F:\n    @staticmethod\n    def softmax(x):\n        return x\ny = F.softmax(3)\n",
}


def _found(code: str, rule: str):
    return [f for f in review_source(code, "case.py", "research", select=[rule]).findings if f.rule == rule]


@pytest.mark.parametrize("rule,code,flagged", [
    *[pytest.param("TR307", c, True, id=f"TR307-flags-{k}") for k, c in TR307_FLAGGED.items()],
    *[pytest.param("TR307", c, False, id=f"TR307-quiet-{k}") for k, c in TR307_QUIET.items()],
    *[pytest.param("TR612", c, True, id=f"TR612-flags-{k}") for k, c in TR612_FLAGGED.items()],
    *[pytest.param("TR612", c, False, id=f"TR612-quiet-{k}") for k, c in TR612_QUIET.items()],
])
def test_rule_cases(rule, code, flagged):
    assert bool(_found(code, rule)) == flagged


@pytest.mark.parametrize("key,after", [
    ("param-group", "    w = (th.randn(n, m) / math.sqrt(n)).requires_grad_()\n"),
    ("view-grad-reset", "    k = torch.randn(6).view(2, 3).requires_grad_()\n"),
    ("negated", "w = (-torch.ones(3)).requires_grad_()\n"),
])
def test_tr307_autofix(key, after):
    code = TR307_FLAGGED[key]
    review = review_source(code, "case.py", "research", select=["TR307"])
    assert after in fixed_sources(review.documents[0], review)[None]


def test_tr307_no_autofix_when_an_operand_may_carry_a_gradient():
    (finding,) = _found(TR307_FLAGGED["scaled-by-argument"], "TR307")
    assert not finding.autofix and finding.fix.after.endswith(".requires_grad_()")
