"""Built-in data, no network: textbook examples, synthetic lines, scikit-learn's bundled sets.

Everything is returned as NumPy float32 features (and float32 regression targets or
int32 class labels), deterministic for a given seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._checks import check_positive_int

__all__ = [
    "Dataset",
    "bias_column_example",
    "load",
    "noisy_line",
    "synthetic_regression",
    "textbook_line",
]


class Dataset(NamedTuple):
    """A supervised data set.

    Attributes:
      x: float32 features ``[n, d]``.
      y: float32 targets ``[n]`` (regression) or int32 labels ``[n]`` (classification).
      task: ``"regression"``, ``"binary"`` or ``"multiclass"``.
      num_classes: number of classes; ``None`` for regression.
      feature_names: one name per column of ``x``.
      name: the data set's name (as accepted by :func:`load`).
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    num_classes: int | None
    feature_names: tuple[str, ...]
    name: str


def textbook_line() -> tuple[np.ndarray, np.ndarray]:
    """The three-point line :math:`y = 2x` at :math:`x = 1, 2, 3`.

    The least-squares fit through the origin is :math:`w = 2` exactly (loss 0).

    Returns:
      ``(x, y)``: float32 ``[3, 1]`` and ``[3]``.

    Example:
      >>> x, y = textbook_line()
      >>> y.tolist()
      [2.0, 4.0, 6.0]
    """
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    return x, (2.0 * x[:, 0]).astype(np.float32)


def noisy_line(n: int = 16, seed: int = 0, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    r"""Samples of :math:`y = 1.477 x + 0.089 + \varepsilon`.

    :math:`x \sim U(-10, 10)` and :math:`\varepsilon \sim \mathcal N(0, \text{noise}^2)`,
    drawn with ``np.random.default_rng(seed)`` (the line of the classic linear-regression
    warm-up in Long Long's "TensorFlow Deep Learning", 2019).

    Args:
      n: number of samples.
      seed: NumPy seed.
      noise: standard deviation of :math:`\varepsilon` (>= 0).

    Returns:
      ``(x, y)``: float32 ``[n, 1]`` and ``[n]``.

    Example:
      >>> x, y = noisy_line(4)
      >>> x.shape, y.shape
      ((4, 1), (4,))
    """
    n = check_positive_int("n", n)
    if not isinstance(noise, numbers.Real) or not noise >= 0:
        raise ValueError(f"noise must be a non-negative float, got {noise=!r}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-10.0, 10.0, size=(n, 1))
    y = 1.477 * x[:, 0] + 0.089 + rng.normal(0.0, noise, size=n)
    return x.astype(np.float32), y.astype(np.float32)


def bias_column_example() -> tuple[np.ndarray, np.ndarray]:
    """Design matrix with an explicit bias column: ``y = 1 * x0 + 1 * x1`` exactly.

    Returns:
      ``(X, y)`` with ``X = [[1, 2], [1, 3], [1, 4], [1, 5]]`` and ``y = [3, 4, 5, 6]``
      (float32); the exact solution is ``w = [1, 1]``.

    Example:
      >>> X, y = bias_column_example()
      >>> (X @ np.ones(2) == y).all()
      np.True_
    """
    x = np.array([[1, 2], [1, 3], [1, 4], [1, 5]], np.float32)
    return x, np.array([3, 4, 5, 6], np.float32)


def synthetic_regression(n: int = 1000, d: int = 10, seed: int = 0, noise: float = 0.1) -> Dataset:
    r"""Linear-regression data :math:`y = X w + b + \varepsilon` for benchmarks.

    :math:`X_{ij} \sim \mathcal N(0, 1)`, :math:`w_j \sim \mathcal N(0, 1)`,
    :math:`b \sim \mathcal N(0, 1)`, :math:`\varepsilon \sim \mathcal N(0, \text{noise}^2)`,
    all from ``np.random.default_rng(seed)`` (in that order: w, b, X, noise).

    Args:
      n: samples.
      d: features.
      seed: NumPy seed.
      noise: noise standard deviation (>= 0).

    Returns:
      A regression :class:`Dataset` named ``"synthetic_regression"``, float32.

    Example:
      >>> synthetic_regression(100, 3).x.shape
      (100, 3)
    """
    n = check_positive_int("n", n)
    d = check_positive_int("d", d)
    if not isinstance(noise, numbers.Real) or not noise >= 0:
        raise ValueError(f"noise must be a non-negative float, got {noise=!r}")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    b = rng.normal()
    x = rng.normal(size=(n, d))
    y = x @ w + b + rng.normal(0.0, noise, size=n)
    return Dataset(
        x.astype(np.float32),
        y.astype(np.float32),
        "regression",
        None,
        tuple(f"x{j}" for j in range(d)),
        "synthetic_regression",
    )




def _sklearn(name: str) -> Dataset:
    from sklearn import datasets as skd

    loader: Callable[..., object] = {
        "diabetes": skd.load_diabetes,
        "breast_cancer": skd.load_breast_cancer,
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
    }[name]
    bunch = loader()
    x = np.asarray(bunch.data, np.float32)  # type: ignore[attr-defined]
    target = np.asarray(bunch.target)  # type: ignore[attr-defined]
    names = tuple(str(f) for f in getattr(bunch, "feature_names", range(x.shape[1])))
    if name == "diabetes":
        return Dataset(x, target.astype(np.float32), "regression", None, names, name)
    k = int(target.max()) + 1
    task = "binary" if k == 2 else "multiclass"
    return Dataset(x, target.astype(np.int32), task, k, names, name)


def _line() -> Dataset:
    x, y = textbook_line()
    return Dataset(x, y, "regression", None, ("x",), "line")


def _noisy_line() -> Dataset:
    x, y = noisy_line()
    return Dataset(x, y, "regression", None, ("x",), "noisy_line")


LOADERS: dict[str, Callable[[], Dataset]] = {
    "diabetes": lambda: _sklearn("diabetes"),
    "breast_cancer": lambda: _sklearn("breast_cancer"),
    "digits": lambda: _sklearn("digits"),
    "iris": lambda: _sklearn("iris"),
    "wine": lambda: _sklearn("wine"),
    "line": _line,
    "noisy_line": _noisy_line,
}


def load(name: str) -> Dataset:
    """Load a built-in data set by name (scikit-learn's bundled files; no download).

    ============== ========== ===== ==== ========
    name           task       n     d    classes
    ============== ========== ===== ==== ========
    diabetes       regression 442   10   --
    breast_cancer  binary     569   30   2
    digits         multiclass 1797  64   10 (8x8 images, pixels 0..16)
    iris           multiclass 150   4    3
    wine           multiclass 178   13   3
    line           regression 3     1    -- (:func:`textbook_line`)
    noisy_line     regression 16    1    -- (:func:`noisy_line` defaults)
    ============== ========== ===== ==== ========

    Features are unscaled; standardize with :func:`jaxgd.data.fit_standardizer` fitted on
    the training part only.

    Args:
      name: one of the names above.

    Returns:
      A :class:`Dataset`.

    Example:
      >>> ds = load("iris")
      >>> ds.x.shape, ds.task, ds.num_classes
      ((150, 4), 'multiclass', 3)
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset name={name!r}; valid names: {sorted(LOADERS)}")
    return LOADERS[name]()
