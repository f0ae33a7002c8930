"""The event view's one-line statistics of a tensor."""

from __future__ import annotations

import numpy as np

from views.event import tensor_summary


def stats_line(x: np.ndarray) -> str:
    return tensor_summary("x", x).plain.splitlines()[1].strip()


def test_statistics_match_float64_reference():
    rng = np.random.default_rng(3)
    for x in (rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal((4, 8, 8)).astype(np.float16),
              np.arange(-5, 7, dtype=np.int32)):
        r = x.astype(np.float64)
        assert stats_line(x) == (f"min {r.min():.4g}  max {r.max():.4g}  mean {r.mean():.4g}  std {r.std():.4g}"
                                 f"  ‖·‖ {np.linalg.norm(r):.4g}")


def test_non_finite_values_are_counted_and_left_out_of_the_statistics():
    line = stats_line(np.array([1.0, np.inf, -2.0, np.nan, 4.0], dtype=np.float32))
    assert line.startswith("min -2  max 4  mean 1  std 2.449")
    assert line.endswith("2 non-finite")
    assert stats_line(np.array([np.nan, np.inf], dtype=np.float32)) == "no finite values  2 non-finite"
