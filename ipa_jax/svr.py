# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Linear epsilon-insensitive support vector regression, the baseline of Khosla et al. 2014.

The problem, on standardised features `z = (x - mean) / std` (std of a constant feature
taken as 1), with an unregularised bias `b`:

    minimise  P(v, b) = 0.5 * ||v||^2 + C * sum_i max(0, |y_i - z_i . v - b| - epsilon).

It is solved exactly, to a certified relative duality gap, through its dual

    maximise  D(beta) = -0.5 * ||Z^T beta||^2 + y . beta - epsilon * ||beta||_1
    subject to  -C <= beta_i <= C,  sum_i beta_i = 0,            v = Z^T beta,

by a primal-dual interior-point method (Mehrotra predictor-corrector) on the split
`beta = alpha - alpha*`, `0 <= alpha, alpha* <= C`. Each Newton step solves one
`r x r` positive definite system, `r = min(N, D)`, by the Sherman-Morrison-Woodbury
identity. It stops when `(P - D) / |P| <= tol`, where `P` is the primal objective
of `v = Z^T beta` with its exactly optimal bias (a 1-D piecewise-linear minimisation) and `D`
the dual objective of `beta` made exactly feasible: `P* lies in [D, P]`, so the reported gap
bounds the distance to the optimum. The standardisation is folded back so that
`predict_linear(x, w, b)` takes raw features; the regulariser acts on the weights `v` of the
standardised features.

`select_linear_svr` picks `(C, epsilon)` from a grid by Spearman rho on a validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from ipa_jax import metrics


@dataclasses.dataclass(frozen=True)
class SvrSolution:
    """A solved linear epsilon-SVR: `predict_linear(x, w, b)` on raw features."""

    w: np.ndarray  # [D], for raw features
    b: float
    c: float
    epsilon: float
    objective: float  # P(v, b) at the returned solution (standardised coordinates)
    dual_objective: float  # D(beta) of an exactly feasible beta: a lower bound on the optimum
    iterations: int
    seconds: float

    @property
    def gap(self) -> float:
        """The certified relative duality gap `(P - D) / |P|` (0 when both are 0)."""
        return _relative_gap(self.objective, self.dual_objective)


def _relative_gap(primal: float, dual: float) -> float:
    return (primal - dual) / max(abs(primal), 1e-300) if primal != dual else 0.0


def svr_objective(v: np.ndarray, b: float, z: np.ndarray, y: np.ndarray, c: float,
                  epsilon: float) -> float:
    """`0.5 * ||v||^2 + C * sum(max(0, |y - (z @ v + b)| - epsilon))`."""
    residual = np.abs(np.asarray(y, np.float64) - (np.asarray(z, np.float64) @ v + b))
    return float(0.5 * v @ v + c * np.maximum(residual - epsilon, 0.0).sum())


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(z, mean, std)` with `z = (x - mean) / std`; a constant feature keeps std 1."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 0, std, 1.0)  # constant features (e.g. dead ReLUs) stay unscaled
    return (x - mean) / std, mean, std


def best_bias(residual: np.ndarray, epsilon: float) -> float:
    """argmin_b sum_i max(0, |r_i - b| - epsilon): exact (the loss is piecewise linear in b).

    Its slope at b is #{r_i - epsilon < b} - #{r_i + epsilon > b}, which rises through 0
    between breakpoints `r_i +- epsilon`; the middle of the flat optimal stretch is returned.
    """
    r = np.sort(np.asarray(residual, np.float64))
    n = r.size
    points = np.sort(np.r_[r - epsilon, r + epsilon])
    # Slope just right of each breakpoint (both sequences sorted): non-decreasing.
    slope = (np.searchsorted(r - epsilon, points, side="right")
             - (n - np.searchsorted(r + epsilon, points, side="right")))
    k = int(np.searchsorted(slope, 0, side="left"))  # first breakpoint with slope >= 0 after it
    k2 = int(np.searchsorted(slope, 0, side="right"))  # first with slope > 0 after it
    if k < k2 < points.size:  # a flat optimal stretch [points[k], points[k2]]
        return float(0.5 * (points[k] + points[k2]))
    return float(points[min(k, points.size - 1)])


def _feasible(beta: np.ndarray, c: float) -> np.ndarray:
    """`clip(beta - tau, -C, C)` with `tau` such that the sum is exactly 0 (bisection)."""
    lo, hi = -2.0 * c - 1.0, 2.0 * c + 1.0
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        s = np.clip(beta - tau, -c, c).sum()
        if s > 0:
            lo = tau
        else:
            hi = tau
        if hi - lo <= 1e-15 * c:
            break
    out = np.clip(beta - 0.5 * (lo + hi), -c, c)
    # What the bisection leaves (rounding) goes to the coordinate with the most room.
    s = out.sum()
    room = (c - out) if s < 0 else (out + c)
    i = int(np.argmax(room))
    out[i] -= s
    return out


def _certify(z: np.ndarray, y: np.ndarray, beta: np.ndarray, c: float,
             epsilon: float) -> tuple[float, float, np.ndarray, float]:
    """(primal P, dual D, v, b) of `beta` made exactly feasible, v = Z^T beta, b optimal."""
    beta = _feasible(beta, c)
    v = z.T @ beta
    dual = float(-0.5 * v @ v + y @ beta - epsilon * np.abs(beta).sum())
    pred = z @ v
    b = best_bias(y - pred, epsilon)
    primal = float(0.5 * v @ v + c * np.maximum(np.abs(y - pred - b) - epsilon, 0.0).sum())
    return primal, dual, v, b


def _reduced_factor(z: np.ndarray) -> np.ndarray:
    """A factor `F [N, r]` with `F F^T = Z Z^T`, `r = min(N, D')` (D': nonzero columns)."""
    z = z[:, np.any(z != 0.0, axis=0)]
    n, d = z.shape
    if d <= n:
        return z
    evals, evecs = np.linalg.eigh(z @ z.T)
    keep = evals > evals[-1] * 1e-13 if evals.size and evals[-1] > 0 else evals > 0
    return evecs[:, keep] * np.sqrt(evals[keep])


def _newton_system(f: np.ndarray, theta: np.ndarray, a: np.ndarray):
    """`x -> (B B^T + diag(theta))^{-1} x`, B = [F; -F], by Sherman-Morrison-Woodbury."""
    n, r = f.shape
    inv = 1.0 / theta
    if r == 0:  # every feature constant: H = 0
        return lambda x: inv * x
    e = inv[:n] + inv[n:]  # B^T diag(1/theta) B = F^T diag(e) F
    # I + F' diag(e) F; syrk computes the upper triangle only, all cho_factor reads.
    core = scipy.linalg.blas.dsyrk(1.0, (f * np.sqrt(e)[:, None]).T, trans=0, lower=0)
    core[np.diag_indices(r)] += 1.0
    chol = scipy.linalg.cho_factor(core, lower=False, check_finite=False)

    def m_inv(x):
        y = inv * x
        q = scipy.linalg.cho_solve(chol, f.T @ (y[:n] - y[n:]), check_finite=False)
        fq = f @ q
        return y - inv * np.r_[fq, -fq]

    return m_inv


def _max_step(pairs) -> float:
    """The largest step in (0, 1] keeping every `x + step * dx` of `pairs` non-negative."""
    step = 1.0
    for x, dx in pairs:
        neg = dx < 0
        if np.any(neg):
            step = min(step, float(np.min(-x[neg] / dx[neg])))
    return step


def _ipm_step(f, g, a, c, u, lam, s, t):
    """One Mehrotra predictor-corrector step for
    `min 0.5 u'Hu + g'u  s.t.  a'u = 0,  0 <= u <= C`, `H = B B'`, `B = [F; -F]`."""
    n = f.shape[0]
    w = c - u
    fb = f @ (f.T @ (u[:n] - u[n:]))
    r_d = np.r_[fb, -fb] + g - lam * a - s + t  # stationarity residual
    r_p = a @ u
    mu = (u @ s + w @ t) / (4 * n)
    m_inv = _newton_system(f, s / u + t / w, a)
    m_a = m_inv(a)

    def newton(r_us, r_wt):  # complementarity residuals u*s - target, w*t - target
        m_rhs = m_inv(-r_d - r_us / u + r_wt / w)
        d_lam = (-r_p - a @ m_rhs) / (a @ m_a)
        du = m_rhs + d_lam * m_a
        return du, d_lam, (-r_us - s * du) / u, (-r_wt + t * du) / w

    du, _, ds, dt = newton(u * s, w * t)  # predictor: affine scaling
    step = _max_step(((u, du), (w, -du), (s, ds), (t, dt)))
    mu_aff = ((u + step * du) @ (s + step * ds) + (w - step * du) @ (t + step * dt)) / (4 * n)
    sigma = (mu_aff / mu) ** 3
    du, d_lam, ds, dt = newton(u * s + du * ds - sigma * mu, w * t - du * dt - sigma * mu)
    step = 0.99 * _max_step(((u, du), (w, -du), (s, ds), (t, dt)))
    return u + step * du, lam + step * d_lam, s + step * ds, t + step * dt


def _solve(z: np.ndarray, y: np.ndarray, c: float, epsilon: float, tol: float,
           max_iter: int) -> tuple[np.ndarray, float, float, float, int]:
    """Interior point on the split dual; returns (v, b, P, D, iterations) of the best gap."""
    n = z.shape[0]
    b = best_bias(y, epsilon)
    if np.all(np.abs(y - b) <= epsilon):  # v = 0 fits every target: the optimum is 0
        return np.zeros(z.shape[1]), b, 0.0, 0.0, 0
    f = _reduced_factor(z)  # [N, r]: the dual depends on Z only through Z Z^T
    # u = (alpha, alpha*), beta = alpha - alpha*; g = (eps - y, eps + y), a = (1, -1).
    g = np.r_[epsilon - y, epsilon + y]
    a = np.r_[np.ones(n), -np.ones(n)]
    u = np.full(2 * n, 0.5 * c)  # beta = 0: a'u = 0 holds from the start
    lam = 0.0  # the multiplier of a'u = 0
    s = np.maximum(g, 0.0) + 1.0  # multipliers of u >= 0 and of C - u >= 0, chosen so that
    t = np.maximum(-g, 0.0) + 1.0  # the stationarity residual g - s + t is 0 at beta = 0
    best = None
    for it in range(1, max_iter + 1):
        primal, dual, v, b = _certify(z, y, u[:n] - u[n:], c, epsilon)
        if best is None or primal - dual < best[2] - best[3]:
            best = (v, b, primal, dual, it - 1)
        if _relative_gap(primal, dual) <= tol:
            break
        u, lam, s, t = _ipm_step(f, g, a, c, u, lam, s, t)
    return best


def fit_linear_svr(
    x: np.ndarray,
    y: np.ndarray,
    *,
    c: float = 1.0,
    epsilon: float = 0.1,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> SvrSolution:
    """Fits `y ~ x @ w + b` by linear epsilon-SVR, to a relative duality gap <= `tol`.

    Deterministic. Raises ValueError when the gap is not reached in `max_iter` interior-point
    iterations (it is reached in 5 to 20 on the embedded data).
    """
    start = time.perf_counter()
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != x.shape[:1] or x.shape[0] < 2:
        raise ValueError(f"need x [N, D] and y [N], N >= 2, got {x.shape}, {y.shape}")
    if not (c > 0 and np.isfinite(c) and epsilon >= 0 and np.isfinite(epsilon)):
        raise ValueError(f"need C > 0 and epsilon >= 0, got C={c}, epsilon={epsilon}")
    z, mean, std = standardise(x)
    v, b, primal, dual, iterations = _solve(z, y, float(c), float(epsilon), tol, max_iter)
    solution = SvrSolution(w=v / std, b=b - float(mean @ (v / std)), c=float(c),
                           epsilon=float(epsilon), objective=primal, dual_objective=dual,
                           iterations=iterations, seconds=time.perf_counter() - start)
    if not solution.gap <= tol:
        raise ValueError(f"linear SVR (C={c}, epsilon={epsilon}) stopped at relative duality "
                         f"gap {solution.gap:.2e} > tol={tol:.0e} after {iterations} iterations")
    return solution


def predict_linear(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """`x @ w + b` on raw features."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64) + b


@dataclasses.dataclass(frozen=True)
class SvrSelection:
    """The grid point with the best validation Spearman rho, and every grid point's results."""

    best: SvrSolution
    validation_rho: float
    grid: tuple  # one dict per grid point, in grid order: c, epsilon, validation_rho,
    # objective, relative_gap, seconds


_SELECTIONS: dict[str, SvrSelection] = {}  # every run of a Table 3/5 grid fits the same SVR


def select_linear_svr(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    c_grid,
    epsilon_grid,
    tol: float = 1e-6,
) -> SvrSelection:
    """Fits every `(C, epsilon)` of the grid on train, keeps the best by validation Spearman rho.

    Ties (and undefined rho) go to the earlier grid point, C varying slowest. Memoised on the
    inputs' bytes for this process: the runs of `latent_svm_table` share features and targets.
    """
    c_grid, epsilon_grid = tuple(float(c) for c in c_grid), tuple(float(e) for e in epsilon_grid)
    if not c_grid or not epsilon_grid:
        raise ValueError(f"need a non-empty grid, got C {c_grid}, epsilon {epsilon_grid}")
    arrays = [np.ascontiguousarray(a, np.float64) for a in (x_train, y_train, x_val, y_val)]
    digest = hashlib.sha256(repr((c_grid, epsilon_grid, tol, [a.shape for a in arrays]))
                            .encode())
    for a in arrays:
        digest.update(a.tobytes())
    key = digest.hexdigest()
    if key in _SELECTIONS:
        return _SELECTIONS[key]
    best, best_rho, grid = None, -np.inf, []
    for c in c_grid:
        for epsilon in epsilon_grid:
            sol = fit_linear_svr(arrays[0], arrays[1], c=c, epsilon=epsilon, tol=tol)
            rho = metrics.spearman_rho(predict_linear(arrays[2], sol.w, sol.b), arrays[3])
            grid.append(dict(c=c, epsilon=epsilon, validation_rho=rho, objective=sol.objective,
                             relative_gap=sol.gap, seconds=sol.seconds))
            if best is None or rho > best_rho:  # nan never wins over a number
                best, best_rho = sol, rho
    _SELECTIONS[key] = SvrSelection(best=best, validation_rho=float(best_rho), grid=tuple(grid))
    return _SELECTIONS[key]
