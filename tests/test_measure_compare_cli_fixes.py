"""Fixes from the dynamic-engine stress test: compare (complex outputs, relative error, inputs
written in place), run_backward (dict/tuple/complex results), the CLI (one import, exit 2 when no
check could run), meta prediction with backward, and negative fitted exponents."""
import argparse
import math
import textwrap
import warnings

import pytest
import torch

from torchreview_lab.measure import compare
from torchreview_lab.measure._harness import backward_root, run_backward
from torchreview_lab.measure.cli import add_check_arguments, load_functions, run_check
from torchreview_lab.measure.compare import CompareResult
from torchreview_lab.measure.fit import PowerLawFit, fit_power_law
from torchreview_lab.measure.meta import meta_run
from torchreview_lab.measure.result import Point, ScalingResult
from torchreview_lab.measure.trackers import LiveStorageTracker, ProfilerMemoryTracker


# ----------------------------------------------------------------------------------- #7 complex


def _one_input(T):
    return (torch.randn(T),)


def test_compare_sees_the_imaginary_part_and_leaks_no_warning():
    def spectrum(x):
        return torch.fft.rfft(x)

    def spectrum_conj(x):  # imaginary part negated: another result
        return torch.fft.rfft(x).conj()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning ("casting complex values to real") would raise
        bad = compare(spectrum, spectrum_conj, _one_input, sizes=[4, 8], seeds=(0,))
        good = compare(spectrum, spectrum, _one_input, sizes=[4, 8], seeds=(0,))
        bad_nograd = compare(spectrum, spectrum_conj, _one_input, sizes=[8], seeds=(0,), grads=False)
    assert not bad.ok and len(bad.failures) == 2 and bad.failures[0].what == "output 0"
    assert good.ok and good.cases[0].what == "outputs and gradients"  # complex gradients compared too
    assert not bad_nograd.ok
    torch.manual_seed(0)
    ref = torch.fft.rfft(torch.randn(4))
    assert bad.cases[0].max_abs_diff == pytest.approx(float(2 * ref.imag.abs().max()), rel=1e-5)


def test_compare_complex_against_real_output_disagrees():
    res = compare(lambda x: torch.fft.fft(x), lambda x: torch.fft.fft(x).real, _one_input, sizes=[4], seeds=(0,))
    assert not res.ok and "complex64 vs float32" in res.failures[0].what


def test_relative_error_is_relative_to_the_reference():
    res = compare(lambda x: torch.ones(3), lambda x: torch.full((3,), 2.0), _one_input, sizes=[3], seeds=(0,))
    (case,) = res.cases
    assert case.max_abs_diff == pytest.approx(1.0)
    assert case.max_rel_diff == pytest.approx(1.0)  # |2 - 1| / |1|, not / |2|


# ----------------------------------------------------------------------------------- #8 in place


def _two_inputs(T):
    return torch.randn(T, 4), torch.randn(4)


def _normalize(x, b):
    return (x - x.mean(0)) + b


def _normalize_inplace(x, b):
    x -= x.mean(0)  # writes into its input
    return x + b


@pytest.mark.parametrize("grads", [True, False])
def test_inplace_implementation_is_a_note_not_a_disagreement(grads):
    res = compare(_normalize, _normalize_inplace, _two_inputs, sizes=[3, 5], seeds=(0,), grads=grads)
    assert res.ok, str(res)
    assert not res.findings()
    assert len(res.notes) == 1 and "_normalize_inplace writes into its input tensor 0 in place" in res.notes[0]
    assert all(c.notes for c in res.cases)
    assert res.cases[0].what == ("outputs and gradients" if grads else "outputs")
    assert "note: _normalize_inplace writes" in str(res) and "writes into its input" in res._repr_html_()
    data = res.to_json()
    assert data["notes"] == res.notes
    assert CompareResult.from_json(data).to_json() == data


def test_grads_false_never_sets_requires_grad():
    seen = []

    def a(x, b):
        seen.append((x.requires_grad, b.requires_grad))
        return x + b

    res = compare(a, a, _two_inputs, sizes=[2], seeds=(0, 1), grads=False)
    assert res.ok and seen == [(False, False)] * 4


def test_each_implementation_gets_identical_fresh_inputs():
    def doubles_in_place(x):
        return x.mul_(2)

    def doubles(x):
        return x * 2

    res = compare(doubles_in_place, doubles, _one_input, sizes=[5], seeds=(0, 1), grads=False)
    assert res.ok, str(res)  # fn_b saw the values fn_a got, not the ones fn_a wrote
    assert res.notes and "doubles_in_place" in res.notes[0]


# ----------------------------------------------------------------------------------- #9 backward


def test_run_backward_dict_tuple_nested_complex_and_no_graph():
    x = torch.randn(5, requires_grad=True)
    assert run_backward({"loss": (x ** 2).sum(), "n": 5}) and x.grad is not None
    x.grad = None
    assert run_backward({"logits": x * 2, "n": 5}) and x.grad is not None  # first tensor value, summed
    x.grad = None
    assert run_backward(((x * 3).sum(), "aux")) and torch.allclose(x.grad, torch.full((5,), 3.0))
    x.grad = None
    assert run_backward([{"loss": x.sum()}, 1]) and x.grad is not None
    x.grad = None
    assert run_backward(torch.fft.fft(x)) and x.grad is not None  # complex: |out|.sum()
    assert not run_backward({"n": 5}) and not run_backward(None) and not run_backward(torch.ones(3))
    with torch.no_grad():
        assert not run_backward({"loss": x.sum()})
    assert backward_root((x * x).sum()).numel() == 1


def test_meta_run_with_backward_follows_a_dict_result():
    def attn_dict(T, device="cpu"):
        q = torch.randn(T, 16, device=device, requires_grad=True)
        return {"loss": torch.softmax(q @ q.T, -1).sum(), "n": T}

    fwd = meta_run(attn_dict, 64).peak_bytes
    bwd = meta_run(attn_dict, 64, backward=True).peak_bytes
    assert bwd > fwd  # the backward ran on meta


# ----------------------------------------------------------------------------------- #10 CLI

_CLI_FILE = """
import os
import torch
from torch import nn

with open(os.environ["TR_LOADS_FILE"], "a") as fh:
    fh.write("load\\n")
MODEL = nn.Linear(4, 1)

def make_inputs(T):
    return (torch.randn(T, 4), MODEL)

def step(x, model):
    assert model is MODEL, "make_inputs and step see different module globals"
    return model(x).pow(2).mean()

def broken(T):
    x = torch.randn(T)
    raise RuntimeError("shape mismatch in user code")
"""


def _check_args(*argv):
    return add_check_arguments(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.fixture
def cli_file(tmp_path, monkeypatch):
    path = tmp_path / "cli_case.py"
    path.write_text(textwrap.dedent(_CLI_FILE))
    loads = tmp_path / "loads.txt"
    monkeypatch.setenv("TR_LOADS_FILE", str(loads))
    return str(path), loads


def test_check_make_inputs_loads_the_file_once(cli_file, capsys):
    path, loads = cli_file
    rc = run_check(_check_args(f"{path}:step", "--make-inputs", "make_inputs", "--size", "8",
                               "--checks", "grads,syncs"))
    out = capsys.readouterr()
    assert loads.read_text().count("load") == 1
    assert rc == 0, out
    assert "different module globals" not in out.out


def test_load_functions_returns_functions_of_one_module(cli_file):
    path, _ = cli_file
    fn, _, name, (mk,) = load_functions(f"{path}:step", "make_inputs")
    assert name == "step" and fn.__module__ == mk.__module__ and fn.__globals__ is mk.__globals__


def test_check_exits_2_when_no_check_could_run(cli_file, capsys):
    path, _ = cli_file
    assert run_check(_check_args(f"{path}:broken", "--size", "8")) == 2
    err = capsys.readouterr().err
    assert "no check could run" in err and "broken" in err
    assert run_check(_check_args(f"{path}:broken", "--size", "8", "--checks", "grads")) == 2
    capsys.readouterr()
    assert run_check(_check_args(f"{path}:step", "--make-inputs", "nope")) == 2
    assert "has no function 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- #12 meta backward

C, K = 4, 3


def _semimarkov(T, device="cpu"):
    edges = torch.randn(T, K, C, C, device=device, requires_grad=True)
    alpha = [torch.zeros(C, device=device)]
    for t in range(1, T + 1):
        terms = [torch.logsumexp(alpha[t - d][None, :] + edges[t - 1, d - 1], dim=-1) for d in range(1, min(K, t) + 1)]
        alpha.append(torch.logsumexp(torch.stack(terms), dim=0))
    return torch.logsumexp(alpha[-1], dim=0)


def _slices(T, device="cpu"):
    x = torch.randn(T, 16, device=device, requires_grad=True)
    acc = torch.zeros(16, device=device)
    for t in range(T):
        acc = acc + x[t].tanh()
    return acc.sum()


def _attention(T, device="cpu"):
    q = torch.randn(T, 8, device=device, requires_grad=True)
    return torch.softmax(q @ q.T, -1).sum()


def _real_peak(fn, T):
    fn(T).backward()  # warm-up: one-off allocations of a first call
    with ProfilerMemoryTracker() as m:
        fn(T).backward()
    return m.peak_bytes


@pytest.mark.parametrize("fn, T", [(_semimarkov, 12), (_slices, 24), (_attention, 48)])
def test_meta_with_backward_matches_the_real_peak_and_is_deterministic(fn, T):
    real = _real_peak(fn, T)
    metas = [meta_run(fn, T, backward=True).peak_bytes for _ in range(3)]
    assert len(set(metas)) == 1, metas
    assert metas[0] == pytest.approx(real, rel=0.03), (metas[0], real)


def test_tracker_releases_every_storage_after_a_temporary_model():
    tracker = LiveStorageTracker()
    with torch.device("meta"), tracker:
        out = _semimarkov(6)
        out.backward()
        del out
        assert tracker.live_bytes == 0 and tracker.live_storages() == []
    assert tracker.accumulations > 0  # the engine's in-place gradient sums were modelled


# ----------------------------------------------------------------------------------- negative exponents


def test_negative_exponent_is_taken_as_constant_with_low_confidence():
    sizes = [256, 512, 1024]
    fit = fit_power_law(sizes, [1.0e-3, 0.5e-3, 0.25e-3])
    assert fit.exponent == 0.0 and fit.raw_exponent == pytest.approx(-1.0)
    assert fit.clamped and fit.confidence == "low" and fit.r2 == 0.0
    assert fit.big_o() == "O(1)"
    assert fit.predict(1_000_000) == pytest.approx(1.0e-3)  # the largest measured value
    two = fit_power_law([256, 512], [1.0e-3, 0.92e-3])  # two points: R² of any line is 1
    assert two.exponent == 0.0 and two.raw_exponent < 0 and two.confidence == "low"


def test_flat_data_with_a_small_negative_slope_keeps_its_confidence():
    fit = fit_power_law([256, 512, 1024], [1.00e-3, 0.99e-3, 0.98e-3])
    assert fit.exponent == 0.0 and fit.raw_exponent < 0 and fit.r2 == 1.0 and fit.confidence == "high"


def test_positive_exponent_is_untouched_and_json_round_trips():
    fit = fit_power_law([256, 512, 1024], [256.0, 512.0, 1024.0])
    assert fit.raw_exponent is None and not fit.clamped and fit.exponent == pytest.approx(1.0)
    neg = fit_power_law([256, 512], [2.0, 1.0])
    assert PowerLawFit.from_json(neg.to_json()) == neg
    old = {k: v for k, v in neg.to_json().items() if k != "raw_exponent"}  # JSON from before the field
    assert PowerLawFit.from_json(old).raw_exponent is None


def test_scaling_text_says_a_negative_exponent_was_taken_as_constant():
    res = ScalingResult("f", "cpu", [Point(256, 1000, 1.0e-3), Point(512, 2000, 0.9e-3)])
    res.memory_fit = fit_power_law([256, 512], [1000, 2000])
    res.time_fit = fit_power_law([256, 512], [1.0e-3, 0.9e-3])
    text = str(res)
    assert "time:   O(1)" in text and "(fitted -0.15, taken as O(1))" in text and "low confidence" in text
    assert not math.isnan(res.time_fit.predict(10 ** 6))
    assert ScalingResult.from_json(res.to_json()).to_json() == res.to_json()


def _argmax_i64(x):
    return x.argmax(-1)


def _argmax_i32(x):
    return x.argmax(-1).to(torch.int32)


def _argmax_off_by_one(x):
    return (x.argmax(-1) + 1).to(torch.int32)


def test_a_changed_integer_dtype_with_equal_values_is_a_note_and_other_values_still_differ():
    make = lambda T: (torch.randn(T, 5),)  # noqa: E731
    same = compare(_argmax_i64, _argmax_i32, make, sizes=[1, 4], seeds=(0,))
    assert same.ok, str(same)
    assert same.notes == ["output 0: dtype int64 from _argmax_i64 vs int32 from _argmax_i32 (the values agree)"]
    differ = compare(_argmax_i64, _argmax_off_by_one, make, sizes=[4], seeds=(0,))
    assert not differ.ok and differ.failures[0].what == "output 0 (integer values differ)"
    # an integer result against a float one with the same values agrees, with the note
    as_float = compare(_argmax_i64, lambda x: x.argmax(-1).double(), make, sizes=[4], seeds=(0,))
    assert as_float.ok and "dtype int64" in as_float.notes[0] and "float64" in as_float.notes[0]
