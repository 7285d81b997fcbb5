"""Source mapping: IPython masking keeps line numbers; cells are indexed among all cells."""
from __future__ import annotations

import json

import pytest

from torchreview_lab.engine import review_cells, review_path
from torchreview_lab.source import InputError, from_cells, load_path, mask_ipython

BUG = "def f(x):\n    m = torch.zeros(x.shape[0], 4)\n    return x * m\n"


def nb(cells, lang="python"):
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "language": lang}, "language_info": {"name": lang}},
            "cells": cells}


def code(src, cid=None, count=None):
    return {"cell_type": "code", "source": src, "id": cid or f"c{abs(hash(src)) % 10**6}", "metadata": {},
            "outputs": [], "execution_count": count}


def md(src):
    return {"cell_type": "markdown", "source": src, "id": "md", "metadata": {}}


def test_masking_keeps_line_count_and_python_body():
    src = "%%timeit -n 1\nx = 1\n%time y = f()\n!ls -la\nz = !ls\nw = %env HOME\ntorch.zeros?\n"
    out, masked, skip = mask_ipython(src)
    assert skip is None
    assert out.count("\n") == src.count("\n")
    lines = out.split("\n")
    assert lines[0] == "pass" and lines[1] == "x = 1"
    assert lines[3].strip() == "pass" and lines[4] == "z = None" and lines[5] == "w = None"
    assert masked == [1, 3, 4, 5, 6, 7]
    compile(out, "<cell>", "exec")


def test_indented_magic_keeps_block_valid():
    out, _, _ = mask_ipython("for i in range(3):\n    %time f(i)\n    g(i)\n")
    compile(out, "<cell>", "exec")


def test_non_python_cell_magic_is_skipped():
    out, masked, skip = mask_ipython("%%bash\nfor f in *; do echo $f; done\n")
    assert skip and "bash" in skip
    assert out.strip() == ""


def test_cell_index_counts_markdown_and_line_is_cell_relative(tmp_path):
    p = tmp_path / "n.ipynb"
    p.write_text(json.dumps(nb([md("# Title"), code("import torch", count=1), md("text"),
                                code("%%time\n" + BUG, cid="bug-cell", count=7)])))
    r = review_path(p)
    f = next(f for f in r.findings if f.rule == "TR401")
    assert f.cell == 3 and f.cell_id == "bug-cell" and f.execution_count == 7
    assert f.line == 3  # the %%time line counts
    assert f.location() == f"{p} cell 4 [In 7], line 3"


def test_imports_resolve_across_cells():
    r = review_cells([code("import torch as th"), code(BUG.replace("torch.", "th."))], "x.ipynb")
    assert [f.rule for f in r.findings] == ["TR401"]


def test_syntax_error_cell_reported_once_and_others_reviewed():
    cells = [code("import torch"), code("def broken(:\n    pass\n"), code(BUG)]
    r = review_cells(cells, "x.ipynb")
    syntax = [f for f in r.findings if f.rule == "TR001"]
    assert len(syntax) == 1 and syntax[0].cell == 1 and syntax[0].line == 1
    assert any(f.rule == "TR401" and f.cell == 2 for f in r.findings)


def test_non_python_notebook_refused(tmp_path):
    p = tmp_path / "r.ipynb"
    p.write_text(json.dumps(nb([code("x <- 1")], lang="R")))
    with pytest.raises(InputError, match="r.ipynb.*Python notebooks only"):
        load_path(p)


@pytest.mark.parametrize("content,msg", [
    ("{not json", "invalid JSON"),
    ('{"metadata": {}}', "not a Jupyter notebook"),
])
def test_bad_notebook_named_in_error(tmp_path, content, msg):
    p = tmp_path / "bad.ipynb"
    p.write_text(content)
    with pytest.raises(InputError, match=f"bad.ipynb.*{msg}"):
        load_path(p)


def test_missing_file_and_bad_cells():
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_path("nope.py")
    with pytest.raises(InputError, match="cells"):
        from_cells("not a list", "x.ipynb")
    with pytest.raises(InputError, match="cell 1.*source"):
        from_cells([{"cell_type": "code", "source": 3}], "x.ipynb")


def test_list_sources_and_crlf():
    r = review_cells([{"cell_type": "code", "source": ["import torch\r\n", "def f(x):\r\n",
                                                     "    m = torch.zeros(x.shape[0], 4)\r\n", "    return x * m\r\n"]}],
                     "x.ipynb")
    assert [(f.rule, f.line) for f in r.findings] == [("TR401", 3)]


def test_suppression_line_cell_and_unknown_code():
    r = review_cells([code("import torch"), code(BUG.replace("4)", "4)  # torchreview: ignore[TR401]"))], "x.ipynb")
    assert not r.findings
    r = review_cells([code("import torch"), code("# torchreview: ignore-cell[TR4]\n" + BUG)], "x.ipynb")
    assert not r.findings
    r = review_cells([code("import torch"), code(BUG.replace("4)", "4)  # torchreview: ignore"))], "x.ipynb")
    assert not r.findings
    r = review_cells([code("import torch"), code(BUG.replace("4)", "4)  # torchreview: ignore[TR999]"))], "x.ipynb")
    assert [f.rule for f in r.findings] == ["TR401"]
    assert any("unknown rule code TR999" in e for e in r.errors)


def test_helper_in_one_cell_called_in_a_loop_in_another_is_analysed_in_context():
    helper = code("import torch\ndef grad_norm(model):\n    return sum(p.grad.norm() for p in model.parameters()).item()\n")
    loop = code("norms = []\nfor step in range(100):\n    loss = model(x).sum()\n    loss.backward()\n"
                "    norms.append(grad_norm(model))\n", cid="loop")
    r = review_cells([helper, md("## train"), loop], "x.ipynb")
    hits = [f for f in r.findings if f.rule == "TR406"]
    assert [(f.cell, f.line, f.cell_id) for f in hits] == [(2, 5, "loop")]
    assert "grad_norm" in hits[0].problem and ".item()" in hits[0].problem
