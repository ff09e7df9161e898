"""Pure ``(init, apply)`` model pairs.

Every constructor here returns a :class:`Model`, a NamedTuple of two pure functions:

- ``init(key) -> params``: a dict pytree of ``jax.Array`` leaves built from a PRNG key;
- ``apply(params, x) -> outputs``: the forward pass on a batch ``x`` (leading axis = batch).

Models hold no state; every number lives in ``params``, so a model can be vmapped over
configurations, differentiated with ``jax.grad`` and jitted freely.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._checks import check_positive_int, is_int

Params = dict[str, Any]

__all__ = [
    "Model",
    "REGISTRY",
    "RegisteredModel",
    "cnn",
    "get_model",
    "linear",
    "logistic",
    "mlp",
    "rnn",
    "softmax",
]


class Model(NamedTuple):
    """A pure model: ``init(key) -> params`` and ``apply(params, x) -> outputs``."""

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, ArrayLike], jax.Array]


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}




def _check_activation(activation: str) -> Callable[[jax.Array], jax.Array]:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation={activation!r}; valid names: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[activation]


def _check_scale(init_scale: Any) -> float:
    if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real):
        raise ValueError(f"init_scale must be a non-negative float, got {init_scale=!r}")
    if not math.isfinite(init_scale) or init_scale < 0:
        raise ValueError(f"init_scale must be a non-negative float, got {init_scale=!r}")
    return float(init_scale)


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> Params:
    """Normal init with std = gain / sqrt(fan_in) for w, zeros for b."""
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * (gain / math.sqrt(fan_in))
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def linear(in_features: int, out_features: int = 1, init_scale: float = 0.0) -> Model:
    r"""Affine model :math:`h(x) = x W + b`.

    Args:
      in_features: number of input features ``d``.
      out_features: number of outputs ``k``. With ``k = 1`` the output keeps its trailing
        axis, shape ``[n, 1]`` (the losses reshape ``y`` of shape ``[n]`` to match).
      init_scale: ``0.0`` (default) initialises ``w`` and ``b`` to zeros, the classic
        textbook start; a positive value draws both from ``normal * init_scale``.

    Returns:
      A :class:`Model` with params ``{"w": [d, k], "b": [k]}`` and
      ``apply(params, x)`` of shape ``[n, k]`` for ``x`` of shape ``[n, d]``.

    Example:
      >>> m = linear(3)
      >>> p = m.init(jax.random.key(0))
      >>> m.apply(p, jnp.ones((5, 3))).shape
      (5, 1)
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    scale = _check_scale(init_scale)

    def init(key: jax.Array) -> Params:
        if scale == 0.0:
            return {
                "w": jnp.zeros((in_features, out_features), jnp.float32),
                "b": jnp.zeros((out_features,), jnp.float32),
            }
        kw, kb = jax.random.split(key)
        return {
            "w": jax.random.normal(kw, (in_features, out_features), jnp.float32) * scale,
            "b": jax.random.normal(kb, (out_features,), jnp.float32) * scale,
        }

    def apply(params: Params, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x)
        return x @ params["w"] + params["b"]

    return Model(init, apply)


def logistic(in_features: int, init_scale: float = 0.0) -> Model:
    r"""Logistic regression: logits :math:`z = x w + b`, shape ``[n, 1]``.

    The sigmoid :math:`\sigma(z)` is not applied here; it lives in the loss
    (:func:`jaxgd.losses.binary_cross_entropy`) for numerical stability.

    Args:
      in_features: number of input features ``d``.
      init_scale: as in :func:`linear` (zeros by default).

    Returns:
      A :class:`Model` with params ``{"w": [d, 1], "b": [1]}`` returning logits ``[n, 1]``.

    Example:
      >>> m = logistic(2)
      >>> m.apply(m.init(jax.random.key(0)), jnp.ones((4, 2))).shape
      (4, 1)
    """
    return linear(in_features, 1, init_scale)


def softmax(in_features: int, num_classes: int, init_scale: float = 0.0) -> Model:
    r"""Multinomial logistic (softmax) regression: logits :math:`z = x W + b`.

    The softmax :math:`p_c = e^{z_c} / \sum_j e^{z_j}` lives in the loss
    (:func:`jaxgd.losses.softmax_cross_entropy`).

    Args:
      in_features: number of input features ``d``.
      num_classes: number of classes ``C`` (>= 1).
      init_scale: as in :func:`linear` (zeros by default).

    Returns:
      A :class:`Model` with params ``{"w": [d, C], "b": [C]}`` returning logits ``[n, C]``.

    Example:
      >>> m = softmax(4, 3)
      >>> m.apply(m.init(jax.random.key(0)), jnp.ones((2, 4))).shape
      (2, 3)
    """
    check_positive_int("num_classes", num_classes)
    return linear(in_features, num_classes, init_scale)


def mlp(
    in_features: int,
    hidden: Sequence[int] = (32,),
    out_features: int = 1,
    activation: str = "relu",
) -> Model:
    r"""Multi-layer perceptron :math:`h_{l+1} = \phi(h_l W_l + b_l)`, linear last layer.

    Weights are drawn from :math:`\mathcal N(0, g^2 / \text{fan\_in})` (LeCun normal,
    LeCun et al. 1998, "Efficient BackProp"), with gain :math:`g = \sqrt 2` for ReLU
    (He et al. 2015) and :math:`g = 1` otherwise (the output layer always uses
    :math:`g = 1`); biases start at zero.

    Args:
      in_features: input features ``d``.
      hidden: widths of the hidden layers (may be empty: then a linear model).
      out_features: outputs ``k`` (trailing axis kept when ``k = 1``).
      activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.

    Returns:
      A :class:`Model` with params ``{"layers": [{"w", "b"}, ...]}`` (one dict per layer)
      and ``apply(params, x)`` of shape ``[n, k]``.

    Example:
      >>> m = mlp(3, hidden=(8, 8), out_features=2, activation="tanh")
      >>> m.apply(m.init(jax.random.key(0)), jnp.ones((5, 3))).shape
      (5, 2)
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden=!r}")
    hidden = tuple(hidden)
    for i, h in enumerate(hidden):
        check_positive_int(f"hidden[{i}]", h)
    act = _check_activation(activation)
    sizes = (in_features, *hidden, out_features)
    gain = math.sqrt(2.0) if activation == "relu" else 1.0

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            g = 1.0 if i == len(sizes) - 2 else gain
            layers.append(_dense_init(keys[i], fi, fo, g))
        return {"layers": layers}

    def apply(params: Params, x: ArrayLike) -> jax.Array:
        h = jnp.asarray(x)
        layers = params["layers"]
        for layer in layers[:-1]:
            h = act(h @ layer["w"] + layer["b"])
        return h @ layers[-1]["w"] + layers[-1]["b"]

    return Model(init, apply)


def cnn(num_classes: int = 10, channels: int = 8) -> Model:
    r"""Small CNN for 8x8 single-channel images (scikit-learn's digits).

    Layers: 3x3 convolution (``channels`` filters, SAME padding, stride 1) + ReLU,
    2x2 max pool (stride 2) -> ``[n, 4, 4, channels]``, flatten, dense -> logits.

    Args:
      num_classes: number of output classes ``C``.
      channels: convolution filters (default 8).

    Returns:
      A :class:`Model` with params ``{"conv": {"w": [3, 3, 1, ch], "b": [ch]},
      "dense": {"w": [16 * ch, C], "b": [C]}}``; ``apply(params, x)`` accepts
      ``x`` of shape ``[n, 64]`` or ``[n, 8, 8]`` and returns logits ``[n, C]``.

    Example:
      >>> m = cnn(10)
      >>> m.apply(m.init(jax.random.key(0)), jnp.zeros((2, 64))).shape
      (2, 10)
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("channels", channels)
    flat = 4 * 4 * channels

    def init(key: jax.Array) -> Params:
        kc, kd = jax.random.split(key)
        conv_w = jax.random.normal(kc, (3, 3, 1, channels), jnp.float32) * math.sqrt(2.0 / 9.0)
        return {
            "conv": {"w": conv_w, "b": jnp.zeros((channels,), jnp.float32)},
            "dense": _dense_init(kd, flat, num_classes, 1.0),
        }

    def apply(params: Params, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape[1:] not in ((64,), (8, 8)):
            raise ValueError(f"cnn expects x of shape [n, 64] or [n, 8, 8], got {x.shape}")
        img = x.reshape(x.shape[0], 8, 8, 1)
        h = jax.lax.conv_general_dilated(
            img.astype(params["conv"]["w"].dtype),
            params["conv"]["w"],
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = jax.nn.relu(h + params["conv"]["b"])
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = h.reshape(h.shape[0], -1)  # flat (4 * 4 * channels) for the params' channels
        return h @ params["dense"]["w"] + params["dense"]["b"]

    return Model(init, apply)


def rnn(in_features: int, hidden: int, out_features: int = 1, activation: str = "tanh") -> Model:
    r"""Elman recurrent network; the output is read from the last hidden state.

    .. math::
       h_t = \phi(x_t W_x + h_{t-1} W_h + b_h), \quad h_0 = 0, \qquad
       y = h_T W_o + b_o

    (Elman 1990, "Finding structure in time"), scanned over time with ``jax.lax.scan``.

    Args:
      in_features: features per time step ``d``.
      hidden: hidden-state width ``H``.
      out_features: outputs ``k``.
      activation: ``"tanh"`` (default), ``"relu"`` or ``"sigmoid"``.

    Returns:
      A :class:`Model` with params ``{"wx": [d, H], "wh": [H, H], "bh": [H],
      "out": {"w": [H, k], "b": [k]}}``; ``apply(params, x)`` takes ``x`` of shape
      ``[n, T, d]`` and returns ``[n, k]``.

    Example:
      >>> m = rnn(2, 4)
      >>> m.apply(m.init(jax.random.key(0)), jnp.ones((3, 5, 2))).shape
      (3, 1)
    """
    check_positive_int("in_features", in_features)
    check_positive_int("hidden", hidden)
    check_positive_int("out_features", out_features)
    act = _check_activation(activation)

    def init(key: jax.Array) -> Params:
        kx, kh, ko = jax.random.split(key, 3)
        return {
            "wx": jax.random.normal(kx, (in_features, hidden), jnp.float32)
            / math.sqrt(in_features),
            "wh": jax.random.normal(kh, (hidden, hidden), jnp.float32) / math.sqrt(hidden),
            "bh": jnp.zeros((hidden,), jnp.float32),
            "out": _dense_init(ko, hidden, out_features, 1.0),
        }

    def apply(params: Params, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"rnn expects x of shape [n, T, d], got {x.shape}")
        xs = jnp.swapaxes(x, 0, 1)  # [T, n, d]
        h0 = jnp.zeros((x.shape[0], params["wh"].shape[0]), params["wh"].dtype)  # hidden

        def step(h: jax.Array, xt: jax.Array) -> tuple[jax.Array, None]:
            return act(xt @ params["wx"] + h @ params["wh"] + params["bh"]), None

        h_last, _ = jax.lax.scan(step, h0, xs)
        return h_last @ params["out"]["w"] + params["out"]["b"]

    return Model(init, apply)


# ----------------------------------------------------------------------------- registry

TASKS = ("regression", "binary", "multiclass")


class ModelArg(NamedTuple):
    """A keyword a configuration file's ``[model]`` table may give a registered model."""

    default: Any
    ok: Callable[[Any], bool]  # a file's value is acceptable (plain TOML values)
    what: str  # the accepted values in words ("use ...")
    # changes only parameter shapes (``apply`` reads the widths from the parameters), so
    # a [sweep] axis may vary it: a shape axis (see jaxgd.sweep.shape_axes)
    shape: bool = False


class RegisteredModel(NamedTuple):
    """How a configuration file builds a model from data of ``features`` columns.

    ``build(features, outputs, **args)`` returns the :class:`Model`; ``outputs`` is the
    data's: target columns (regression), 1 (binary) or the number of classes.
    ``input_shape(features, **args)`` is one sample's shape as ``apply`` takes it (the
    file's data rows are reshaped to it); it raises ``ValueError`` when the data does
    not fit the model.
    """

    constructor: Callable[..., Model]  # the public constructor (get_model's)
    build: Callable[..., Model]
    task: str  # the task it implies for data that does not say
    tasks: tuple[str, ...]  # the tasks it can learn
    args: dict[str, ModelArg]
    input_shape: Callable[..., tuple[int, ...]]
    doc: str


def _flat(features: int, **_: Any) -> tuple[int, ...]:
    return (features,)


def _image8x8(features: int, **_: Any) -> tuple[int, ...]:
    if features != 64:
        raise ValueError(f"model 'cnn' takes 8x8 images (64 features), got {features}")
    return (features,)  # cnn's apply reshapes [n, 64] itself


def _sequence(features: int, steps: int | None = None, **_: Any) -> tuple[int, ...]:
    t = steps or features
    if features % t:
        raise ValueError(f"model 'rnn' with steps={t} needs a multiple of {t} features, "
                         f"got {features}")
    return (t, features // t)


_SCALE = ModelArg(0.0, lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                  and math.isfinite(v) and v >= 0, "a number >= 0")
_ACT = lambda default: ModelArg(  # noqa: E731
    default, lambda v: v in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}")

REGISTRY: dict[str, RegisteredModel] = {
    "linear": RegisteredModel(
        linear, lambda d, k, init_scale=0.0: linear(d, k, init_scale), "regression", TASKS,
        {"init_scale": _SCALE}, _flat, "affine model x W + b"),
    "logistic": RegisteredModel(
        logistic, lambda d, k, init_scale=0.0: logistic(d, init_scale), "binary", ("binary",),
        {"init_scale": _SCALE}, _flat, "logistic regression (one logit)"),
    "softmax": RegisteredModel(
        softmax, lambda d, k, init_scale=0.0: softmax(d, max(k, 2), init_scale), "multiclass",
        ("binary", "multiclass"), {"init_scale": _SCALE}, _flat, "softmax regression"),
    "mlp": RegisteredModel(
        mlp, lambda d, k, hidden=(32,), activation="relu": mlp(
            d, (hidden,) if is_int(hidden) else tuple(hidden), k, activation),
        "regression", TASKS,
        {"hidden": ModelArg((32,), lambda v: (is_int(v) and v > 0) or (
            isinstance(v, list) and all(is_int(x) and x > 0 for x in v)),
            "a list of positive integers, e.g. [32, 32]", shape=True),
         "activation": _ACT("relu")}, _flat, "multi-layer perceptron"),
    "cnn": RegisteredModel(
        cnn, lambda d, k, channels=8: cnn(max(k, 2), channels), "multiclass",
        ("binary", "multiclass"),
        {"channels": ModelArg(8, lambda v: is_int(v) and v > 0, "a positive integer",
                              shape=True)},
        _image8x8, "small CNN for 8x8 images"),
    "rnn": RegisteredModel(
        rnn, lambda d, k, steps=None, hidden=32, activation="tanh": rnn(
            d // (steps or d), hidden, k, activation), "regression", TASKS,
        {"steps": ModelArg(None, lambda v: is_int(v) and v > 0,
                           "a positive integer (time steps a row is cut into; default: "
                           "one feature per step)"),
         "hidden": ModelArg(32, lambda v: is_int(v) and v > 0, "a positive integer",
                            shape=True),
         "activation": _ACT("tanh")}, _sequence, "Elman RNN over the row's time steps"),
}


def get_model(name: str, **kwargs: Any) -> Model:
    """Build a model by name.

    Args:
      name: one of ``"linear"``, ``"logistic"``, ``"softmax"``, ``"mlp"``, ``"cnn"``,
        ``"rnn"``.
      **kwargs: the constructor's keyword arguments.

    Returns:
      The :class:`Model` built by that constructor.

    Example:
      >>> get_model("mlp", in_features=3, hidden=(4,)).apply  # doctest: +ELLIPSIS
      <function ...>
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model name={name!r}; valid names: {sorted(REGISTRY)}")
    return REGISTRY[name].constructor(**kwargs)
