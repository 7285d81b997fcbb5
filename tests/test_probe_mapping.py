"""Mapping kernel code back to notebook cells, and the definitions isolated mode re-runs."""
from __future__ import annotations

from torchreview_lab.isolated import definition_cells, definition_source
from torchreview_lab.server.probes import locate_in_cells

CELLS = [
    {"cell_type": "markdown", "source": "# title"},
    {"cell_type": "code", "source": "\n\nimport torch\n%time x = 1\ndef f(T):\n    return torch.ones(T)\n"},
    {"cell_type": "code", "source": ["def g(T):\n", "    return T\n"]},
]


def test_locate_tolerates_ipython_transforms():
    # IPython drops leading blank lines and turns magics into get_ipython() calls
    kernel_src = "import torch\nget_ipython().run_line_magic('time', 'x = 1')\ndef f(T):\n    return torch.ones(T)\n"
    assert locate_in_cells(CELLS, kernel_src, 4) == (1, 6)
    assert locate_in_cells(CELLS, "def g(T):\n    return T\n", 2) == (2, 2)
    assert locate_in_cells(CELLS, "def h(T):\n    return T\n", 1) == (None, None)
    assert locate_in_cells(None, "x", 1) == (None, None)


def test_definition_cells_keep_definitions_only_with_line_map():
    cells = [{"cell_type": "code", "source": "import torch\nK = 8\ndata = torch.randn(10)\n@torch.no_grad()\n"
                                            "def f(T):\n    return T\nfor i in range(3):\n    print(i)\n"},
             {"cell_type": "code", "source": "%%bash\nls"},
             {"cell_type": "code", "source": "def broken(:\n"},
             {"cell_type": "code", "source": "if True:\n    device = 'cpu'\nelse:\n    device = 'cuda'\nmodel.fit()"}]
    pieces = definition_cells(cells)
    assert [p[0] for p in pieces] == [0, 3]
    index, code, line_map = pieces[0]
    assert code == "import torch\nK = 8\n@torch.no_grad()\ndef f(T):\n    return T\n"
    assert line_map == [1, 2, 4, 5, 6]
    assert "model.fit" not in definition_source(cells) and "device = 'cuda'" in definition_source(cells)
    scratch = {code.rstrip(): (index, line_map)}
    assert locate_in_cells(cells, code, 5, scratch) == (0, 6)
