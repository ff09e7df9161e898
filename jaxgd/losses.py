"""Per-batch losses, classification accuracy and parameter penalties.

All losses reduce to a scalar by the mean over the batch (leading axis), so the gradient
of a short last batch is the mean over that batch's samples only (the PyTorch
``DataLoader`` convention). Targets ``y`` of shape ``[n]`` are reshaped to predictions of
shape ``[n, 1]``; any other shape mismatch raises ``ValueError`` instead of silently
broadcasting ``[n, 1] - [n]`` to ``[n, n]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "abs_l1",
    "accuracy",
    "binary_cross_entropy",
    "default_penalty_mask",
    "elastic_net",
    "get_loss",
    "half_mse",
    "l1",
    "l2",
    "make_loss",
    "mse",
    "softmax_cross_entropy",
]

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def _match(pred: jax.Array, y: jax.Array, fn: str) -> jax.Array:
    """Reshape ``y`` to ``pred.shape`` when only a trailing unit axis differs."""
    if pred.shape == y.shape:
        return y
    if pred.size == y.size and pred.shape[:1] == y.shape[:1]:
        return y.reshape(pred.shape)
    raise ValueError(f"{fn}: prediction shape {pred.shape} and target shape {y.shape} do not match")


def mse(pred: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""Mean squared error :math:`\frac{1}{m k}\sum_{i,j} (h_{ij} - y_{ij})^2`.

    The mean runs over every element (``m`` samples times ``k`` outputs).

    Args:
      pred: predictions ``[m]`` or ``[m, k]``.
      y: targets of the same shape (``[m]`` is accepted for ``pred`` of shape ``[m, 1]``).

    Returns:
      A scalar.

    Example:
      >>> float(mse(jnp.array([[1.0], [2.0]]), jnp.array([0.0, 0.0])))
      2.5
    """
    pred = jnp.asarray(pred)
    y = _match(pred, jnp.asarray(y), "mse")
    return jnp.mean((pred - y) ** 2)


def half_mse(pred: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""The textbook cost :math:`J = \frac{1}{2m}\sum_{i=1}^m \lVert h_i - y_i\rVert^2`.

    ``m`` is the batch size (leading axis); for one output this is ``mse / 2``, whose
    gradient for a linear model is :math:`\frac1m X^\top (Xw - y)`.

    Args:
      pred: predictions ``[m]`` or ``[m, k]``.
      y: targets of the same shape (``[m]`` accepted for ``[m, 1]``).

    Returns:
      A scalar.

    Example:
      >>> float(half_mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))
      1.25
    """
    pred = jnp.asarray(pred)
    y = _match(pred, jnp.asarray(y), "half_mse")
    return jnp.sum((pred - y) ** 2) / (2 * pred.shape[0])


def binary_cross_entropy(logits: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""Binary cross-entropy on logits, numerically stable, mean over the batch.

    .. math::
       \ell(z, y) = -y \log\sigma(z) - (1 - y)\log(1 - \sigma(z))
                  = \max(z, 0) - z y + \log(1 + e^{-|z|})

    The right-hand form never overflows: logits of :math:`\pm 1000` give finite values
    and gradients (as ``torch.nn.BCEWithLogitsLoss``).

    Args:
      logits: ``[m]`` or ``[m, 1]`` (or ``[m, k]`` for ``k`` independent labels).
      y: labels in ``{0, 1}`` (or probabilities), same shape (``[m]`` accepted).

    Returns:
      A scalar: the mean of :math:`\ell` over all elements.

    Example:
      >>> round(float(binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))), 4)
      0.6931
    """
    z = jnp.asarray(logits)
    y = _match(z, jnp.asarray(y), "binary_cross_entropy").astype(z.dtype)
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)), written so that its derivative is
    # sigmoid(z) everywhere, z = 0 included (max and |.| have slope 0 there under jax.grad)
    return jnp.mean(jax.nn.softplus(z) - z * y)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Softmax cross-entropy with integer labels, mean over the batch.

    .. math::
       \ell(z, c) = -\log \frac{e^{z_c}}{\sum_j e^{z_j}}
                  = \operatorname{logsumexp}(z) - z_c

    computed through ``jax.nn.log_softmax`` (max-shifted, so finite for huge logits).

    Args:
      logits: ``[m, C]``.
      labels: integer class indices ``[m]`` (``[m, 1]`` accepted) in ``[0, C)``.

    Returns:
      A scalar.

    Example:
      >>> round(float(softmax_cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))), 4)
      1.3863
    """
    z = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if labels.ndim == z.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"softmax_cross_entropy: logits shape {z.shape} needs labels of shape "
            f"{z.shape[:-1]}, got {labels.shape}"
        )
    logp = jax.nn.log_softmax(z, axis=-1)
    picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)
    return -jnp.mean(picked)


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Fraction of correct predictions.

    Binary when the logits' last axis has size 1 (or logits are 1-D): predicted class
    :math:`[z > 0]`; otherwise :math:`\arg\max_c z_c`.

    Args:
      logits: ``[m]``, ``[m, 1]`` or ``[m, C]``.
      labels: integer (or 0/1 float) labels ``[m]``.

    Returns:
      A float32 scalar in ``[0, 1]``.

    Example:
      >>> float(accuracy(jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0])))
      0.5
    """
    z = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if z.ndim == 1 or z.shape[-1] == 1:
        pred = (z > 0).reshape(z.shape[0], -1)[:, 0].astype(jnp.int32)
    else:
        pred = jnp.argmax(z, axis=-1)
    labels = labels.reshape(pred.shape).astype(jnp.int32)
    return jnp.mean((pred == labels).astype(jnp.float32))


BIAS_NAMES = ("b", "bias")
VARIABLE_NAMES = ("value", "raw_value")  # flax.nnx Variables: ['bias'].value


def _path_names(path) -> list[str]:
    """The dict keys and attribute names on a key path (sequence indices left out)."""
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            names.append(entry.name)
    return names


def is_bias(path) -> bool:
    """Whether the leaf at ``path`` is a bias: its last dict key or attribute name,
    ignoring a trailing ``value``/``raw_value`` (flax.nnx), is ``b`` or ``bias``
    (flax.linen ``['bias']``, flax.nnx ``['bias'].value``, equinox ``.bias``, haiku ``['b']``)."""
    names = _path_names(path)
    while len(names) > 1 and names[-1] in VARIABLE_NAMES:
        names.pop()
    return bool(names) and names[-1] in BIAS_NAMES


def default_penalty_mask(params: Any) -> Any:
    """Which leaves a penalty applies to: every leaf except biases.

    A leaf is a bias when the last dict key (or attribute name) on its path, ignoring a
    trailing ``value``/``raw_value`` (flax.nnx's ``['bias'].value``), is ``"b"`` or
    ``"bias"``; it gets ``False``, every other leaf ``True``. This is the mask the
    compiled program uses when no ``penalty_mask`` is given.

    Args:
      params: a parameter pytree (dicts, flax linen / nnx state, equinox modules, ...).

    Returns:
      A pytree of Python bools with the structure of ``params``.

    Example:
      >>> default_penalty_mask({"w": jnp.ones(2), "b": jnp.zeros(())})
      {'b': False, 'w': True}
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: not is_bias(path), params)


def _masked_sum(params: Any, mask: Any, fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    if mask is None:
        mask = default_penalty_mask(params)
    terms = jax.tree.map(lambda p, m: jnp.sum(jnp.where(m, fn(jnp.asarray(p)), 0)), params, mask)
    return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


@jax.custom_jvp
def abs_l1(x: ArrayLike) -> jax.Array:
    r""":math:`|x|` whose derivative is :math:`\operatorname{sign}(x)`: 0 at 0.

    ``jnp.abs``'s derivative at 0 is 1 in JAX, so an L1 penalty built on it would push
    every weight that sits exactly at 0 (the built-in linear models start there) to
    :math:`-\eta\lambda_1` on each step. The subgradient used here (and by NumPy's
    ``np.sign`` and PyTorch's ``abs``) leaves it at 0.

    Example:
      >>> float(jax.grad(abs_l1)(0.0)), float(jax.grad(abs_l1)(-2.0))
      (0.0, -1.0)
    """
    return jnp.abs(x)


@abs_l1.defjvp
def _abs_l1_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.abs(x), jnp.sign(x) * t


def l1(params: Any, mask: Any = None) -> jax.Array:
    r"""L1 penalty :math:`\sum_i |w_i|` over the masked leaves.

    Args:
      params: a parameter pytree.
      mask: pytree of bools (or boolean arrays, element-wise) with ``params``' structure;
        ``None`` means :func:`default_penalty_mask` (biases are not penalised). Pass
        ``jax.tree.map(lambda _: True, params)`` to penalise every leaf.

    Returns:
      A scalar (unscaled: multiply by the strength yourself).

    Example:
      >>> float(l1({"w": jnp.array([1.0, -2.0]), "b": jnp.array([5.0])}))
      3.0
    """
    return _masked_sum(params, mask, abs_l1)


def l2(params: Any, mask: Any = None) -> jax.Array:
    r"""L2 penalty :math:`\frac12 \sum_i w_i^2` over the masked leaves.

    The :math:`\frac12` makes its gradient exactly :math:`w` (weight decay).

    Args:
      params: a parameter pytree.
      mask: as in :func:`l1` (``None``: biases not penalised).

    Returns:
      A scalar.

    Example:
      >>> float(l2({"w": jnp.array([1.0, -2.0]), "b": jnp.array([5.0])}))
      2.5
    """
    return 0.5 * _masked_sum(params, mask, jnp.square)


def elastic_net(params: Any, l1: ArrayLike, l2: ArrayLike, mask: Any = None) -> jax.Array:
    r"""Elastic-net penalty :math:`\lambda_1 \sum_i |w_i| + \lambda_2 \frac12 \sum_i w_i^2`.

    Args:
      params: a parameter pytree.
      l1: strength :math:`\lambda_1` (may be a traced array).
      l2: strength :math:`\lambda_2` (may be a traced array).
      mask: as in :func:`l1` (``None``: biases not penalised).

    Returns:
      A scalar.

    Example:
      >>> float(elastic_net({"w": jnp.array([1.0, -2.0])}, 1.0, 2.0))
      8.0
    """
    return l1 * _masked_sum(params, mask, abs_l1) + l2 * 0.5 * _masked_sum(
        params, mask, jnp.square
    )


LOSSES: dict[str, Loss] = {
    "mse": mse,
    "half_mse": half_mse,
    "bce": binary_cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "softmax_ce": softmax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def get_loss(name: str) -> Loss:
    """Look up a batch loss ``loss(pred, y) -> scalar`` by name.

    Args:
      name: ``"mse"``, ``"half_mse"``, ``"bce"`` (``"binary_cross_entropy"``) or
        ``"softmax_ce"`` (``"softmax_cross_entropy"``).

    Returns:
      The loss function.

    Example:
      >>> get_loss("bce") is binary_cross_entropy
      True
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss name={name!r}; valid names: {sorted(LOSSES)}")
    return LOSSES[name]


def make_loss(
    model_apply: Callable[[Any, jax.Array], jax.Array], loss_name: str
) -> Callable[[Any, tuple[ArrayLike, ArrayLike]], jax.Array]:
    """Build the training objective ``loss(params, batch)`` for ``batch = (x, y)``.

    Args:
      model_apply: ``apply(params, x) -> predictions`` (e.g. ``jaxgd.models.linear(3).apply``).
      loss_name: a name accepted by :func:`get_loss`.

    Returns:
      A pure function ``loss(params, (x, y)) = get_loss(loss_name)(model_apply(params, x), y)``
      ready for ``jax.grad`` and ``jaxgd.fit``.

    Example:
      >>> from jaxgd import models
      >>> m = models.linear(1)
      >>> loss = make_loss(m.apply, "half_mse")
      >>> x, y = jnp.array([[1.0], [2.0]]), jnp.array([2.0, 4.0])
      >>> float(loss(m.init(jax.random.key(0)), (x, y)))
      5.0
    """
    fn = get_loss(loss_name)

    def loss(params: Any, batch: tuple[ArrayLike, ArrayLike]) -> jax.Array:
        x, y = batch
        return fn(model_apply(params, jnp.asarray(x)), jnp.asarray(y))

    return loss
