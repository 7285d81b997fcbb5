"""Pure fitting and formatting: no torch runs."""
import math

import pytest

from torchreview_lab.measure._format import fmt_bytes, fmt_size
from torchreview_lab.measure.fit import fit_power_law


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 3.0])
def test_exact_power_law_is_recovered(exponent):
    sizes = [64, 128, 256, 512, 1024]
    fit = fit_power_law(sizes, [3.5 * s ** exponent for s in sizes])
    assert fit.exponent == pytest.approx(exponent, abs=1e-9)
    assert fit.coefficient == pytest.approx(3.5, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.confidence == "high"
    assert fit.predict(4096) == pytest.approx(3.5 * 4096 ** exponent, rel=1e-9)


def test_noise_gives_low_r2_and_low_confidence():
    sizes = [64, 128, 256, 512, 1024, 2048]
    values = [100, 5000, 80, 9000, 120, 7000]
    fit = fit_power_law(sizes, values)
    assert fit.r2 < 0.5
    assert fit.confidence == "low"
    assert not fit.is_power_law


def test_too_few_points_and_zeros():
    assert fit_power_law([64], [10]) is None
    assert fit_power_law([64, 64], [10, 20]) is None
    assert fit_power_law([64, 128, 256], [0, 0, 10]) is None  # only one positive point


def test_min_size_filters_points():
    sizes = [8, 16, 256, 512, 1024]
    values = [1.0, 1.0, 256.0, 512.0, 1024.0]  # overhead-dominated small sizes
    fit = fit_power_law(sizes, values, min_size=256)
    assert fit.exponent == pytest.approx(1.0)
    assert fit.min_size == 256 and fit.n == 3


def test_inverse_gives_largest_size_that_fits():
    fit = fit_power_law([100, 200, 400], [1e3 * 100, 1e3 * 200, 1e3 * 400])
    assert fit.inverse(1e3 * 34_700) == pytest.approx(34_700, rel=1e-6)
    flat = fit_power_law([100, 200, 400], [50.0, 50.0, 50.0])
    assert flat.inverse(100.0) is None   # constant memory that fits: unbounded
    assert flat.inverse(10.0) == 0.0     # constant memory that does not fit: nothing fits


def test_formatting():
    assert fmt_bytes(921.6e9) == "922 GB"
    assert fmt_bytes(80e9) == "80 GB"
    assert fmt_bytes(512) == "512 B"
    assert fmt_size(34_712.4) == "34,700"
    assert fmt_size(512) == "512"
    assert math.isfinite(fit_power_law([1, 2], [1, 2]).r2)


def test_offset_is_taken_out_before_the_fit_and_added_back():
    # a linear cost on top of a fixed per-call overhead: a plain power law flattens the exponent
    sizes = [256, 512, 1024, 2048]
    overhead, per_t = 2e-3, 1e-6
    times = [overhead + per_t * s for s in sizes]
    plain = fit_power_law(sizes, times)
    assert plain.exponent < 0.6
    fit = fit_power_law(sizes, times, offset=overhead)
    assert fit.exponent == pytest.approx(1.0, abs=1e-9)
    assert fit.offset == overhead
    assert fit.predict(16384) == pytest.approx(overhead + per_t * 16384, rel=1e-9)
    assert fit.inverse(overhead + per_t * 50_000) == pytest.approx(50_000, rel=1e-6)
    assert fit.inverse(overhead / 2) == 0.0  # below the overhead alone: no size fits


def test_fit_json_round_trip_keeps_offset_and_reads_older_json():
    from torchreview_lab.measure.fit import PowerLawFit

    fit = fit_power_law([256, 512, 1024], [1.5, 2.0, 3.0], offset=1.0)
    back = PowerLawFit.from_json(fit.to_json())
    assert back == fit and back.offset == 1.0
    old = {"exponent": 1.0, "coefficient": 2.0, "r2": 0.99}  # written before the offset existed
    assert PowerLawFit.from_json(old).offset == 0.0
    assert PowerLawFit.from_json(dict(old, future_key=1)).predict(10) == pytest.approx(20.0)
