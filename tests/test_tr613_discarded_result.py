"""TR613: an out-of-place tensor op called as a statement. Notebook display lines stay quiet, module
objects (whose .to()/.float() work in place) stay quiet, and the fix assigns the result."""
import pytest

from torchreview_lab.engine import review_cells, review_source


def _tr613(code):
    return review_source(code, "t.py", "research", select=["TR613"]).findings


def test_the_last_line_of_a_notebook_cell_is_its_display_not_a_bug():
    cells = [{"cell_type": "code", "source": "import torch\nx = torch.ones(3)\nx.clamp(0, 1)\n"},
             {"cell_type": "markdown", "source": "apply the mask"},
             {"cell_type": "code", "source": "s = torch.randn(2, 2)\ns.masked_fill(s > 0, 0.0)\nprint(s)\n"},
             {"cell_type": "code", "source": "s.unsqueeze(0)"}]
    found = review_cells(cells, "nb.ipynb", "research", select=["TR613"]).findings
    assert [(f.cell, f.line) for f in found] == [(2, 2)]
    assert found[0].autofix and found[0].fix.after == "s = s.masked_fill(s > 0, 0.0)"


@pytest.mark.parametrize("code", [
    # nn.Module.to/.float/.cuda work in place and return self
    "import torch.nn as nn\nnet = nn.Linear(2, 2)\nnet.to('cpu')\nnet.float()\nprint(net)\n",
    "def setup(self, device):\n    self.model.to(device)\n    self.model.half()\n",
    # a parameter of unknown type: .to() could be a module's
    "def prepare(model, device):\n    model.to(device)\n    return model\n",
    # in-place twins, out=, method results used
    "import torch\ndef f(x, m):\n    x.masked_fill_(m, 0)\n    x.clamp_(0, 1)\n    torch.mul(x, 2, out=x)\n    return x.unsqueeze(0)\n",
    # not torch: list.sort and set.add work in place; a module function with out=
    "items = [3, 1]\nitems.sort()\nseen = set()\nseen.add(1)\n",
])
def test_quiet(code):
    assert _tr613(code) == []


@pytest.mark.parametrize("code, line, after", [
    ("import torch\ndef f(x, device):\n    x = torch.as_tensor(x)\n    x.to(device)\n    return x\n", 4, "x = x.to(device)"),
    ("import torch\ndef f(h):\n    h = torch.zeros(4)\n    h.detach()\n    return h\n", 4, "h = h.detach()"),
    ("import torch\ndef f(self, x):\n    self.cache.transpose(0, 1)\n    return x\n", 3, "self.cache = self.cache.transpose(0, 1)"),
    ("import torch as th\ndef f(x):\n    th.clamp(x, 0, 1)\n    return x\n", 3, "x = th.clamp(x, 0, 1)"),
])
def test_flagged_with_an_assigning_fix(code, line, after):
    found = _tr613(code)
    assert [f.line for f in found] == [line]
    assert found[0].autofix and found[0].fix.after == after
    assert found[0].severity == "high" and found[0].category == "algorithm-correctness"


def test_a_subscripted_receiver_gets_advice_but_no_autofix():
    found = _tr613("def f(xs):\n    xs[0].clamp(0, 1)\n    return xs\n")
    assert [f.line for f in found] == [2] and not found[0].autofix
    assert found[0].fix.after == "<name> = xs[0].clamp(0, 1)"
