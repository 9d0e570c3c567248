import math

import numpy as np
import pytest

from posenc.lab import results as res


def _rows():
    rows = []
    for seed, (i, o) in enumerate([(1.0, 0.2), (0.8, 0.0)]):
        for n in (1, 2):
            rows.append(res.Row("a", seed, n, "exact_match", i))
        for n in (3, 4):
            rows.append(res.Row("a", seed, n, "exact_match", o))
    return rows


def test_csv_round_trip_and_malformed_row(tmp_path):
    path = tmp_path / "results.csv"
    for r in _rows():
        res.append_row(path, r)
    assert res.read_rows(path) == _rows()
    assert path.read_text().splitlines()[0] == "encoding,seed,length,metric,value"
    with path.open("a") as f:
        f.write("b,zero,3,exact_match,0.5\n")
    with pytest.raises(ValueError, match="line 10"):
        res.read_rows(path)


def test_summary_means_per_seed_then_over_seeds():
    (s,) = res.summary(_rows(), (1, 2))
    assert s.seeds == 2
    assert s.in_mean == pytest.approx(0.9) and s.in_std == pytest.approx(np.std([1.0, 0.8], ddof=1))
    assert s.out_mean == pytest.approx(0.1) and s.out_std == pytest.approx(np.std([0.2, 0.0], ddof=1))


def test_markdown_table_and_curves():
    table = res.markdown_table(_rows(), (1, 2), [1, 2, 3, 4])
    assert "| `a` | 2 | 90.0% ± 14.1 | 10.0% ± 14.1 |" in table
    assert "in distribution (1–2)" in table and "beyond training (3–4)" in table
    # lengths outside training on both sides: each side's range (it said 1–8 for these, overlapping 3–5)
    both = res.markdown_table([res.Row("a", 0, n, "exact_match", 0.5) for n in range(1, 9)], (3, 5), list(range(1, 9)))
    assert "in distribution (3–5)" in both and "beyond training (1–2, 6–8)" in both
    x, mean, std = res.curves(_rows())["a"]
    np.testing.assert_array_equal(x, [1, 2, 3, 4])
    np.testing.assert_allclose(mean, [0.9, 0.9, 0.1, 0.1])
    ppl = [res.Row("b", 0, n, "perplexity", v) for n, v in ((64, 5.0), (128, 4.0), (256, 6.0))]
    t = res.markdown_table(ppl, (1, 128), [64, 128, 256])
    assert "| `b` | 1 | 4.5 | 6 |" in t and "lower is better" in t
    assert math.isnan(res.summary(ppl, (1, 300))[0].out_mean)
