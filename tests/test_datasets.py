"""Built-in data sets: shapes, dtypes, closed-form facts."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from jaxgd import datasets


def test_textbook_line():
    x, y = datasets.textbook_line()
    assert x.shape == (3, 1) and y.shape == (3,)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(y, 2 * x[:, 0])
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(w, [2.0], rtol=1e-6)


def test_noisy_line_recovers_coefficients_and_is_seeded():
    x, y = datasets.noisy_line(n=200, seed=1)
    assert x.shape == (200, 1) and y.shape == (200,) and x.dtype == np.float32
    a = np.c_[x[:, 0], np.ones(200)].astype(np.float64)
    slope, icpt = np.linalg.lstsq(a, y.astype(np.float64), rcond=None)[0]
    assert abs(slope - 1.477) < 0.01 and abs(icpt - 0.089) < 0.01
    x2, y2 = datasets.noisy_line(n=200, seed=1)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(y, datasets.noisy_line(n=200, seed=2)[1])
    assert datasets.noisy_line().__getitem__(0).shape == (16, 1)
    _, y0 = datasets.noisy_line(n=50, noise=0.0)
    x0, _ = datasets.noisy_line(n=50, noise=0.0)
    np.testing.assert_allclose(y0, 1.477 * x0[:, 0] + 0.089, rtol=1e-5, atol=1e-5)


def test_bias_column_example_exact_solution():
    x, y = datasets.bias_column_example()
    np.testing.assert_array_equal(x, [[1, 2], [1, 3], [1, 4], [1, 5]])
    np.testing.assert_array_equal(y, [3, 4, 5, 6])
    np.testing.assert_allclose(np.linalg.solve(x.T @ x, x.T @ y), [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize(
    "name,shape,task,k",
    [
        ("diabetes", (442, 10), "regression", None),
        ("breast_cancer", (569, 30), "binary", 2),
        ("digits", (1797, 64), "multiclass", 10),
        ("iris", (150, 4), "multiclass", 3),
        ("wine", (178, 13), "multiclass", 3),
        ("line", (3, 1), "regression", None),
        ("noisy_line", (16, 1), "regression", None),
    ],
)
def test_load(name, shape, task, k):
    ds = datasets.load(name)
    assert ds.name == name and ds.x.shape == shape and ds.task == task and ds.num_classes == k
    assert ds.x.dtype == np.float32 and ds.y.shape == (shape[0],)
    assert len(ds.feature_names) == shape[1]
    if task == "regression":
        assert ds.y.dtype == np.float32
    else:
        assert ds.y.dtype == np.int32
        np.testing.assert_array_equal(np.unique(ds.y), np.arange(k))


def test_load_matches_sklearn_values():
    ds = datasets.load("breast_cancer")
    ref = load_breast_cancer()
    np.testing.assert_allclose(ds.x, ref.data.astype(np.float32))
    np.testing.assert_array_equal(ds.y, ref.target)
    assert ds.feature_names[0] == "mean radius"


def test_load_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="mnist.*diabetes"):
        datasets.load("mnist")


def test_synthetic_regression():
    ds = datasets.synthetic_regression(500, 4, seed=3, noise=0.1)
    assert ds.x.shape == (500, 4) and ds.y.shape == (500,)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.float32 and ds.task == "regression"
    a = np.c_[ds.x, np.ones(500)].astype(np.float64)
    coef, res, *_ = np.linalg.lstsq(a, ds.y.astype(np.float64), rcond=None)
    assert np.sqrt(res[0] / 500) == pytest.approx(0.1, rel=0.15)
    rng = np.random.default_rng(3)
    np.testing.assert_allclose(coef, np.r_[rng.normal(size=4), rng.normal()], atol=0.03)
    np.testing.assert_array_equal(ds.x, datasets.synthetic_regression(500, 4, seed=3).x)
    with pytest.raises(ValueError, match="noise"):
        datasets.synthetic_regression(10, 2, noise=-1.0)
