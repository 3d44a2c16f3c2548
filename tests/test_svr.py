# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The linear epsilon-SVR baseline: solved to its optimum, C and epsilon chosen on validation."""

import numpy as np
import pytest
from scipy import optimize

from ipa_jax import metrics, svr


def _problem(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.uniform(-2, 2, d)
    y = x @ rng.normal(size=d) / np.sqrt(d) + 0.5 * rng.standard_t(3, size=n) + 1.5
    return x, y


def _reference(x, y, c, eps):
    """The dual QP solved by SLSQP: min 0.5 b'Kb - y'b + eps(1'al + 1'al*), b = al - al*,
    0 <= al, al* <= C, 1'b = 0; returns (v, b) in standardised coordinates and P(v, b)."""
    z, _, _ = svr.standardise(x)
    n = len(y)
    k = z @ z.T

    def fun(u):
        beta = u[:n] - u[n:]
        return 0.5 * beta @ k @ beta - y @ beta + eps * u.sum()

    def jac(u):
        grad = k @ (u[:n] - u[n:]) - y
        return np.r_[grad, -grad] + eps

    res = optimize.minimize(
        fun, np.zeros(2 * n), jac=jac, method="SLSQP", bounds=[(0, c)] * (2 * n),
        constraints=[{"type": "eq", "fun": lambda u: u[:n].sum() - u[n:].sum(),
                      "jac": lambda u: np.r_[np.ones(n), -np.ones(n)]}],
        options={"ftol": 1e-14, "maxiter": 2000})
    assert res.success, res.message
    v = z.T @ (res.x[:n] - res.x[n:])
    b = svr.best_bias(y - z @ v, eps)
    return v, b, svr.svr_objective(v, b, z, y, c, eps)


@pytest.mark.parametrize("n, d, c, eps", [
    (40, 6, 1.0, 0.1),  # N > D: the Woodbury system in feature space
    (30, 6, 0.05, 0.3),  # most residuals outside the tube: many beta at +-C
    (15, 25, 1.0, 0.1),  # N < D: the reduced factor of Z Z^T
    (40, 6, 2.0, 0.0),  # epsilon 0: the least-absolute-deviation regression
])
def test_matches_the_reference_qp_solver(n, d, c, eps):
    x, y = _problem(n, d, seed=n + d)
    v_ref, b_ref, p_ref = _reference(x, y, c, eps)
    sol = svr.fit_linear_svr(x, y, c=c, epsilon=eps, tol=1e-8)
    z, mean, std = svr.standardise(x)
    # The reported objective is the objective of the returned (w, b), and a certified optimum.
    v = sol.w * std
    np.testing.assert_allclose(svr.svr_objective(v, sol.b + mean @ sol.w, z, y, c, eps),
                               sol.objective, rtol=1e-9)
    assert sol.dual_objective <= sol.objective and sol.gap <= 1e-8
    assert sol.objective == pytest.approx(p_ref, rel=1e-6, abs=1e-9)
    assert sol.dual_objective <= p_ref * (1 + 1e-9) + 1e-12
    # The primal is 1-strongly convex in v: the same weights; predictions agree too.
    np.testing.assert_allclose(v, v_ref, atol=2e-4 * max(1.0, np.abs(v_ref).max()))
    np.testing.assert_allclose(svr.predict_linear(x, sol.w, sol.b), z @ v_ref + b_ref,
                               atol=2e-3 * np.abs(y).max())


def test_recovers_a_linear_function_on_raw_features():
    rng = np.random.default_rng(5)
    n, d, noise, eps = 600, 20, 0.02, 0.05
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.uniform(-2, 2, d)
    w_true, b_true = rng.normal(size=d) / np.sqrt(d), 1.5
    y = x @ w_true + b_true + noise * rng.normal(size=n)
    sol = svr.fit_linear_svr(x, y, c=1.0, epsilon=eps)
    assert np.corrcoef(sol.w, w_true)[0, 1] > 0.999
    residual = y - svr.predict_linear(x, sol.w, sol.b)
    assert np.mean(np.abs(residual) <= eps + 3 * noise) > 0.99
    again = svr.fit_linear_svr(x, y, c=1.0, epsilon=eps)
    np.testing.assert_array_equal(again.w, sol.w)  # deterministic


def test_best_bias_is_the_exact_minimiser():
    rng = np.random.default_rng(3)
    for trial in range(20):
        r = np.round(rng.normal(size=rng.integers(1, 12)), 1)  # ties
        eps = [0.0, 0.1, 0.5][trial % 3]

        def loss(b, r=r, eps=eps):
            return np.maximum(np.abs(r - b) - eps, 0).sum()

        got = loss(svr.best_bias(r, eps))
        grid = np.linspace(r.min() - 1, r.max() + 1, 4001)
        breakpoints = np.r_[r - eps, r + eps]  # the minimum is at a breakpoint
        assert got <= min(loss(b) for b in np.r_[grid, breakpoints]) + 1e-12


def test_unreachable_tolerance_is_an_error():
    x, y = _problem(60, 8, seed=1)
    with pytest.raises(ValueError, match="duality gap"):
        svr.fit_linear_svr(x, y, c=1.0, epsilon=0.1, tol=1e-8, max_iter=2)
    with pytest.raises(ValueError, match="C > 0"):
        svr.fit_linear_svr(x, y, c=0.0)


def test_c_and_epsilon_are_chosen_on_validation():
    # Few noisy training images, many features: a small C (more regularisation) wins on
    # held-out data, which the largest C's training objective cannot tell.
    rng = np.random.default_rng(11)
    d = 30
    w_true = rng.normal(size=d)

    def draw(n):
        x = rng.normal(size=(n, d))
        return x, x @ w_true + 4.0 * rng.normal(size=n)

    (x_tr, y_tr), (x_val, y_val) = draw(40), draw(300)
    c_grid, eps_grid = (0.001, 0.01, 0.1, 10.0), (0.0, 1.0)
    sel = svr.select_linear_svr(x_tr, y_tr, x_val, y_val, c_grid=c_grid, epsilon_grid=eps_grid)
    rhos = {}
    for c in c_grid:
        for eps in eps_grid:
            sol = svr.fit_linear_svr(x_tr, y_tr, c=c, epsilon=eps)
            rhos[c, eps] = metrics.spearman_rho(svr.predict_linear(x_val, sol.w, sol.b), y_val)
    best = max(rhos, key=rhos.get)
    assert (sel.best.c, sel.best.epsilon) == best
    assert sel.validation_rho == pytest.approx(rhos[best])
    assert [(g["c"], g["epsilon"]) for g in sel.grid] == list(rhos)
    assert all(g["relative_gap"] <= 1e-6 for g in sel.grid)  # each solved to the tolerance
    assert best[0] != max(c_grid)  # the choice matters here
    # Memoised: the same inputs give the same object.
    again = svr.select_linear_svr(x_tr, y_tr, x_val, y_val, c_grid=c_grid, epsilon_grid=eps_grid)
    assert again is sel


def test_degenerate_problems():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    # Every target within epsilon of one value: v = 0, the optimum is 0.
    sol = svr.fit_linear_svr(x, np.full(30, 2.0), c=1.0, epsilon=0.1)
    assert (sol.objective, sol.gap, sol.b) == (0.0, 0.0, 2.0) and not sol.w.any()
    # Every feature constant: only the bias is fitted, at the median-like optimum.
    sol = svr.fit_linear_svr(np.ones((30, 4)), y, c=1.0, epsilon=0.1)
    best = np.maximum(np.abs(y - svr.best_bias(y, 0.1)) - 0.1, 0).sum()
    assert sol.objective == pytest.approx(best, rel=1e-6) and not sol.w.any()
