"""``jaxgd.fit`` against independent references on scikit-learn's bundled data sets.

* closed-form least squares (``numpy.linalg.lstsq``) on diabetes, reached by full-batch
  GD and by full-batch Adam with a decaying learning rate (float64);
* ``scipy.optimize.minimize`` (L-BFGS-B) on l2-penalised logistic regression on
  breast_cancer, reached by full-batch GD (float64);
* PyTorch ``torch.optim.SGD`` (momentum) and ``torch.optim.Adam`` on the same in-order
  mini-batches with a short last batch (float32).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

import jaxgd


def standardise(x):
    return (x - x.mean(0)) / x.std(0)


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def bce(params, batch):
    x, y = batch
    z = x @ params["w"] + params["b"]
    # mean of log(1 + e^z) - y z, the numerically stable binary cross-entropy on logits
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


@pytest.fixture(scope="module")
def diabetes():
    x, y = load_diabetes(return_X_y=True)
    return standardise(x), y.astype(np.float64)


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    return standardise(x), y.astype(np.float64)


def lstsq_solution(x, y):
    a = np.hstack([x, np.ones((len(y), 1))])
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    return coef[:-1], coef[-1]


def zeros(d):
    return {"w": jnp.zeros(d), "b": jnp.zeros(())}


# ----------------------------------------------------------------------------- closed form


def test_full_batch_gd_reaches_least_squares(x64, report, diabetes):
    """GD with lr = 1/L converges linearly; it stops on grad_tol, close to lstsq."""
    x, y = diabetes
    w_ref, b_ref = lstsq_solution(x, y)
    lip = np.linalg.eigvalsh(2 * x.T @ x / len(y)).max()  # Hessian of the MSE in w
    res = jaxgd.fit(mse, zeros(x.shape[1]), (x, y), hparams={"learning_rate": 1.0 / lip},
                    batch_size=None, epochs=30_000, grad_tol=1e-8, shuffle=False)
    assert res.stop_reason == "grad_tol"
    assert res.epochs_run < 30_000
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    err_w = np.max(np.abs(w - w_ref))
    rel_w = err_w / np.max(np.abs(w_ref))
    loss_ref = np.mean((x @ w_ref + b_ref - y) ** 2)
    rel_loss = abs(res.final_loss - loss_ref) / loss_ref
    report("lstsq vs full-batch GD (f64, grad_tol=1e-8)", max_abs_w=err_w, max_rel_w=rel_w,
           abs_b=abs(b - b_ref), rel_loss=rel_loss, epochs=res.epochs_run)
    # |w - w*| <= |grad| / mu with mu = smallest Hessian eigenvalue (0.017): ~6e-7
    assert err_w < 1e-5
    assert abs(b - b_ref) < 1e-6
    assert rel_loss < 1e-12


def test_full_batch_adam_reaches_least_squares(x64, report, diabetes):
    """Adam with a rate decaying 3 -> 0.03 converges (constant-rate Adam would oscillate)."""
    x, y = diabetes
    w_ref, b_ref = lstsq_solution(x, y)
    epochs = 6000
    res = jaxgd.fit(mse, zeros(x.shape[1]), (x, y), optimizer="adam",
                    hparams={"learning_rate": 3.0, "decay_rate": 1e-2,
                             "transition_steps": float(epochs)},
                    schedule="exponential", batch_size=None, epochs=epochs, shuffle=False)
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    err_w = np.max(np.abs(w - w_ref))
    rel_w = err_w / np.max(np.abs(w_ref))
    loss_ref = np.mean((x @ w_ref + b_ref - y) ** 2)
    rel_loss = (res.final_loss - loss_ref) / loss_ref
    report("lstsq vs full-batch Adam (f64, exp. decay)", max_abs_w=err_w, max_rel_w=rel_w,
           abs_b=abs(b - b_ref), rel_loss=rel_loss)
    assert rel_w < 1e-8
    assert abs(b - b_ref) < 1e-8
    assert abs(rel_loss) < 1e-12


# ----------------------------------------------------------------------------- scipy


def test_l2_logistic_regression_matches_scipy_lbfgs(x64, report, cancer):
    """min mean BCE + l2/2 |w|^2 (bias not penalised): GD vs scipy's L-BFGS-B."""
    from scipy.optimize import minimize

    x, y = cancer
    l2 = 0.05
    d = x.shape[1]

    def f(theta):
        w, b = theta[:d], theta[d]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        val = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w
        r = (p - y) / len(y)
        return val, np.concatenate([x.T @ r + l2 * w, [r.sum()]])

    opt = minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "ftol": 1e-16, "gtol": 1e-12})
    w_ref, b_ref = opt.x[:d], opt.x[d]
    assert np.max(np.abs(f(opt.x)[1])) < 1e-8  # scipy did converge

    # L = lambda_max(X^T X / n) / 4 + l2 bounds the curvature of the objective
    lip = np.linalg.eigvalsh(x.T @ x / len(y)).max() / 4 + l2
    res = jaxgd.fit(bce, zeros(d), (x, y), optimizer="nesterov",
                    hparams={"learning_rate": 1.0 / lip, "momentum": 0.9, "l2": l2},
                    batch_size=None, epochs=20_000, grad_tol=1e-10, shuffle=False)
    assert res.stop_reason == "grad_tol"
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    err_w = np.max(np.abs(w - w_ref))
    rel_w = err_w / np.max(np.abs(w_ref))
    obj_ref = f(opt.x)[0]
    report("scipy L-BFGS-B vs nesterov GD, l2 logistic (f64)", max_abs_w=err_w,
           max_rel_w=rel_w, abs_b=abs(b - b_ref),
           objective_diff=res.history["objective"][-1] - obj_ref, epochs=res.epochs_run)
    assert err_w < 1e-7
    assert abs(b - b_ref) < 1e-7
    assert abs(res.history["objective"][-1] - obj_ref) < 1e-12
    # the objective recorded is the penalised one, the loss the data term only
    np.testing.assert_allclose(
        res.history["objective"][-1] - res.history["loss"][-1], 0.5 * l2 * np.sum(w * w),
        rtol=1e-10)


# ----------------------------------------------------------------------------- PyTorch


def torch_train(x, y, w0, b0, *, opt_name, hp, batch_size, epochs):
    """The classic PyTorch loop: in-order mini-batches (DataLoader, shuffle=False)."""
    import torch

    torch.manual_seed(0)
    w = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    if opt_name == "sgd":
        opt = torch.optim.SGD([w, b], lr=hp["learning_rate"], momentum=hp["momentum"])
    else:
        opt = torch.optim.Adam([w, b], lr=hp["learning_rate"], betas=(hp["b1"], hp["b2"]),
                               eps=hp["eps"])
    ds = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         drop_last=False)
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.mean((xb @ w + b - yb) ** 2)
            loss.backward()
            opt.step()
            steps += 1
    return w.detach().numpy(), float(b.detach()), steps


@pytest.mark.parametrize(
    "opt_name,optimizer,hp",
    [
        ("sgd", "momentum", {"learning_rate": 0.02, "momentum": 0.9}),
        ("adam", "adam", {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    ],
)
def test_matches_pytorch_minibatch(report, diabetes, opt_name, optimizer, hp):
    pytest.importorskip("torch")
    x, y = diabetes
    x = x.astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    batch_size, epochs = 32, 4  # 442 = 13 * 32 + 26: a short last batch every epoch
    r = np.random.default_rng(1)
    w0 = (0.1 * r.normal(size=x.shape[1])).astype(np.float32)
    b0 = np.float32(0.5)
    w_t, b_t, steps_t = torch_train(x, y, w0, b0, opt_name=opt_name, hp=hp,
                                    batch_size=batch_size, epochs=epochs)
    res = jaxgd.fit(mse, {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, (x, y),
                    optimizer=optimizer, hparams=hp, batch_size=batch_size, epochs=epochs,
                    shuffle=False)
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    assert w.dtype == np.float32
    assert res.steps_run == steps_t == epochs * 14
    err_w = np.max(np.abs(w - w_t))
    rel_w = err_w / np.max(np.abs(w_t))
    report(f"PyTorch {opt_name} (f32, B=32, last batch 26)", max_abs_w=err_w,
           max_rel_w=rel_w, abs_b=abs(b - b_t), moved=np.max(np.abs(w_t - w0)))
    # float32 parity: differences are summation-order rounding only
    np.testing.assert_allclose(w, w_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, b_t, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(w_t - w0)) > 0.1
