"""run_scale / run_check: exit codes, output formats and error messages."""
import argparse
import json
import os
import sys

import pytest

from torchreview_lab.measure.cli import (add_check_arguments, add_scale_arguments, load_function, run_check,
                                         run_scale)

HERE = os.path.dirname(__file__)
SCALING = os.path.join(HERE, "measure_cases", "scaling.py")
BUGGY = os.path.join(HERE, "measure_cases", "buggy.py")


def _scale_args(*argv):
    return add_scale_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def _check_args(*argv):
    return add_check_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_scale_text(capsys):
    rc = run_scale(_scale_args(f"{SCALING}:linear", "--sizes", "64,128,256", "--repeats", "1", "--device", "cpu"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "verdict: O(T^1.00) memory" in out and "256" in out


def test_scale_json_and_target_that_does_not_fit(capsys):
    rc = run_scale(_scale_args(f"{SCALING}:quadratic", "--sizes", "64,128,256", "--repeats", "1",
                               "--target", "10000000", "--format", "json"))
    data = json.loads(capsys.readouterr().out)
    assert rc == 1  # 10M x 10M floats cannot fit
    assert data["target"]["fits"] is False and data["target"]["size"] == 10_000_000
    assert data["memory_fit"]["exponent"] == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize("spec, message", [
    ("missing_file.py:f", "no such file: missing_file.py"),
    (f"{SCALING}:nope", "has no function 'nope'"),
    ("no_colon_here", "expected FILE.py:FUNCTION"),
    (f"{SCALING}:", "expected FILE.py:FUNCTION"),
])
def test_scale_and_check_errors_name_file_and_function(spec, message, capsys):
    assert run_scale(_scale_args(spec)) == 2
    assert message in capsys.readouterr().err
    assert run_check(_check_args(spec)) == 2
    assert message in capsys.readouterr().err


def test_scale_bad_sizes(capsys):
    assert run_scale(_scale_args(f"{SCALING}:linear", "--sizes", "64,abc")) == 2
    assert "--sizes" in capsys.readouterr().err


def test_scale_broken_harness_exit_2(capsys):
    assert run_scale(_scale_args(f"{SCALING}:broken", "--sizes", "64,128", "--no-meta")) == 2
    assert "ValueError" in capsys.readouterr().out


def test_check_exit_codes_and_json(capsys):
    rc = run_check(_check_args(f"{BUGGY}:nan_bug", "--size", "8", "--checks", "nonfinite", "--format", "json"))
    data = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [f["rule"] for f in data["findings"]] == ["TR013"]
    assert data["findings"][0]["path"].endswith("buggy.py")
    rc = run_check(_check_args(f"{BUGGY}:nan_ok", "--size", "8", "--checks", "TR013"))
    assert rc == 0 and "no findings" in capsys.readouterr().out
    rc = run_check(_check_args(f"{BUGGY}:sync_bug", "--size", "8", "--checks", "syncs", "--fail-on", "high"))
    assert rc == 0  # only medium/low findings
    capsys.readouterr()


def test_check_unknown_check_name(capsys):
    assert run_check(_check_args(f"{BUGGY}:nan_ok", "--checks", "bogus")) == 2
    assert "unknown check" in capsys.readouterr().err


def test_load_function_uses_unique_module_and_cleans_sys_path(tmp_path):
    f = tmp_path / "user_code.py"
    f.write_text("import helper\n\ndef h(T):\n    return helper.VALUE * T\n")
    (tmp_path / "helper.py").write_text("VALUE = 3\n")
    fn, path, name = load_function(f"{f}:h")
    assert fn(2) == 6 and name == "h"
    assert fn.__module__.startswith("_torchreview_user_")
    assert str(tmp_path) not in sys.path
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('nope')\n")
    from torchreview_lab.measure.cli import SpecError

    with pytest.raises(SpecError, match="importing .*bad.py failed"):
        load_function(f"{bad}:h")


def test_cli_unloads_the_user_module(capsys):
    before = {m for m in sys.modules if m.startswith("_torchreview_user_")}
    run_check(_check_args(f"{BUGGY}:nan_ok", "--size", "4", "--checks", "nonfinite"))
    capsys.readouterr()
    assert {m for m in sys.modules if m.startswith("_torchreview_user_")} == before


def test_scale_meta_time_limit_extrapolates_a_python_loop(capsys):
    """python_loop steps through T in Python: at T=400,000 the meta run would take about a minute, so
    with 2 s the meta figure comes from smaller meta runs (the (T,) float32 tensor it fills)."""
    rc = run_scale(_scale_args(f"{SCALING}:python_loop", "--sizes", "64,128,256", "--repeats", "1",
                               "--device", "cpu", "--target", "400000", "--meta-time-limit", "2", "--format", "json"))
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    t = data["target"]
    assert t["meta_from_sizes"] and max(t["meta_from_sizes"]) < 400_000
    assert t["meta_peak_bytes"] == pytest.approx(4 * 400_000, rel=0.01)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_scale_meta_time_limit_must_be_positive_seconds(value, capsys):
    with pytest.raises(SystemExit):
        _scale_args(f"{SCALING}:linear", "--meta-time-limit", value)
    assert "--meta-time-limit" in capsys.readouterr().err
