"""The headless CLI: formats, exit codes, errors that name the input, --fix, rules/explain."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchreview_lab.cli import main
from torchreview_lab.findings import CATEGORIES, finding_json_schema

BUGGY = ("import torch\n\n\ndef masked(data):\n    mask = torch.zeros(data.shape[0], data.shape[1])\n"
         "    return data * mask\n")
CLEAN = "def add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n    return a + b\n"


@pytest.fixture
def buggy(tmp_path):
    p = tmp_path / "buggy.py"
    p.write_text(BUGGY)
    return p


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_matches_schema_fields(capsys, buggy):
    code, out, _ = run(capsys, "review", buggy, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"findings", "summary"}
    f = data["findings"][0]
    assert set(f) == set(finding_json_schema()["properties"])
    assert f["rule"] == "TR401" and f["line"] == 5 and f["cell"] is None and f["category"] in CATEGORIES
    assert f["fix"]["after"] == "torch.zeros(data.shape[0], data.shape[1], device=data.device)"
    assert data["summary"]["by_severity"]["high"] >= 1 and data["summary"]["files"] == 1


def test_fail_on_exit_codes(capsys, buggy, tmp_path):
    assert run(capsys, "review", buggy, "--fail-on", "high")[0] == 1
    assert run(capsys, "review", buggy, "--fail-on", "critical")[0] == 0
    clean = tmp_path / "clean.py"
    clean.write_text(CLEAN)
    assert run(capsys, "review", clean, "--fail-on", "low", "--standard", "production")[0] == 0


def test_unreadable_input_exit_2_names_file(capsys, tmp_path, buggy):
    code, out, err = run(capsys, "review", tmp_path / "missing.py")
    assert code == 2 and "missing.py" in err
    bad = tmp_path / "broken.ipynb"
    bad.write_text("{")
    code, out, err = run(capsys, "review", buggy, bad)
    assert code == 2 and "broken.ipynb" in err and "invalid JSON" in err
    assert "TR401" in out  # the readable file was still reviewed


def test_usage_errors_exit_2(capsys, buggy):
    assert run(capsys, "review", buggy, "--format", "yaml")[0] == 2
    assert run(capsys, "review")[0] == 2
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "explain", "TR99999")
    assert code == 2 and "TR99999" in err


def test_markdown_report_format(capsys, buggy):
    code, out, _ = run(capsys, "review", buggy, "--format", "markdown")
    heads = [ln for ln in out.splitlines() if ln.startswith("## ")]
    assert heads == ["## Summary", "## Critical Issues", "## High Priority Issues", "## Medium Priority Issues",
                     "## Low Priority Issues", "## Positive Observations", "## Recommendations"]
    assert f"**Location**: `{buggy}:5`" in out
    assert "# Before" in out and "# After" in out and "device=data.device" in out


def test_sarif_output(capsys, buggy):
    code, out, _ = run(capsys, "review", buggy, "--format", "sarif")
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    res = sarif["runs"][0]["results"][0]
    assert res["ruleId"] == "TR401" and res["level"] == "error"
    assert res["locations"][0]["physicalLocation"]["region"]["startLine"] == 5
    assert sarif["runs"][0]["tool"]["driver"]["rules"][0]["id"] == "TR401"


def test_text_output_and_standard_toggle(capsys, buggy):
    _, research, _ = run(capsys, "review", buggy)
    _, production, _ = run(capsys, "review", buggy, "--standard", "production")
    assert f"{buggy}:5:" in research and "TR401 [high]" in research
    assert research.strip().endswith("research standard")
    assert len(production.splitlines()) >= len(research.splitlines())


def test_select_and_ignore(capsys, buggy):
    _, out, _ = run(capsys, "review", buggy, "--format", "json", "--ignore", "TR4")
    assert all(not f["rule"].startswith("TR4") for f in json.loads(out)["findings"])
    _, out, _ = run(capsys, "review", buggy, "--format", "json", "--select", "TR401")
    assert {f["rule"] for f in json.loads(out)["findings"]} == {"TR401"}


def test_directory_is_searched(capsys, tmp_path, buggy):
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skip.py").write_text(BUGGY)
    _, out, _ = run(capsys, "review", tmp_path, "--format", "json")
    assert {Path(f["path"]).name for f in json.loads(out)["findings"]} == {"buggy.py"}


def test_config_in_pyproject(capsys, tmp_path, buggy):
    (tmp_path / "pyproject.toml").write_text('[tool.torchreview]\nignore = ["TR401"]\nstandard = "production"\n')
    _, out, _ = run(capsys, "review", buggy, "--format", "json")
    data = json.loads(out)
    assert data["summary"]["standard"] == "production"
    assert all(f["rule"] != "TR401" for f in data["findings"])
    (tmp_path / "pyproject.toml").write_text('[tool.torchreview]\nstandard = "strict"\n')
    code, _, err = run(capsys, "review", buggy)
    assert code == 2 and "pyproject.toml" in err and "standard" in err


def test_fix_rewrites_py_and_notebook_keeps_outputs(capsys, tmp_path):
    from torchreview_lab.rules import all_rules

    fixable = [r for r in all_rules() if r.autofix]
    if not fixable:
        pytest.skip("no rule with an autofix registered")
    rule = fixable[0]
    example = next(e for e in rule.invalid_examples() if e.expected_fix is not None)
    p = tmp_path / "fixme.py"
    p.write_text(example.code)
    code, _, err = run(capsys, "review", p, "--fix", "--select", rule.code)
    assert "applied" in err
    assert p.read_text() == example.expected_fix
    nbp = tmp_path / "fixme.ipynb"
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": "python"}, "custom": 1},
          "cells": [{"cell_type": "code", "id": "a", "metadata": {"tags": ["x"]}, "execution_count": 3,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}],
                     "source": example.code}]}
    nbp.write_text(json.dumps(nb))
    run(capsys, "review", nbp, "--fix", "--select", rule.code)
    after = json.loads(nbp.read_text())
    assert "".join(after["cells"][0]["source"]) == example.expected_fix
    assert after["cells"][0]["outputs"] == nb["cells"][0]["outputs"] and after["metadata"] == nb["metadata"]


def test_rules_and_explain(capsys):
    code, out, _ = run(capsys, "rules", "--format", "json")
    rules = json.loads(out)
    assert code == 0 and {"TR101", "TR201", "TR301", "TR401"} <= {r["code"] for r in rules}
    code, out, _ = run(capsys, "explain", "tr101")
    assert code == 0 and out.startswith("## TR101") and "**Why is this bad**" in out and "```python" in out


def test_module_entry_point_subprocess(buggy):
    p = subprocess.run([sys.executable, "-m", "torchreview_lab.cli", "review", str(buggy), "--fail-on", "medium"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "TR401" in p.stdout


def test_duration_convention_from_config(capsys, tmp_path):
    code = ("def a(dur_table, K):\n    return [dur_table[k - 1] for k in range(1, K + 1)]\n\n\n"
            "def b(dur_table, K):\n    return [dur_table[min(k, K - 1)] for k in range(1, K + 1)]\n")
    p = tmp_path / "durations.py"
    p.write_text(code)
    (tmp_path / "pyproject.toml").write_text('[tool.torchreview]\nduration-convention = "clamp"\nselect = ["TR902"]\n')
    _, out, _ = run(capsys, "review", p, "--format", "json")
    assert [f["line"] for f in json.loads(out)["findings"]] == [2]
    (tmp_path / "pyproject.toml").write_text('[tool.torchreview]\nduration-convention = "k-1"\nselect = ["TR902"]\n')
    _, out, _ = run(capsys, "review", p, "--format", "json")
    assert [f["line"] for f in json.loads(out)["findings"]] == [6]
