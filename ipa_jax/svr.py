# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Linear epsilon-insensitive support vector regression, the baseline of Khosla et al. 2014.

Solved in the primal with full-batch (or minibatch) Adam on standardised features; the
standardisation is folded back so that `predict_linear(x, w, b)` takes raw features. The
regulariser `0.5 * ||w||^2` therefore acts on the weights of the standardised features.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def svr_objective(
    w: jnp.ndarray, b: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray, c: float, epsilon: float
) -> jnp.ndarray:
    """`0.5 * ||w||^2 + C * sum(max(0, |y - (x @ w + b)| - epsilon))`."""
    residual = jnp.abs(y - (x @ w + b))
    return 0.5 * jnp.sum(w * w) + c * jnp.sum(jax.nn.relu(residual - epsilon))


@functools.partial(jax.jit, static_argnames=("steps", "batch_size"))
def _fit(
    z: jnp.ndarray,
    y: jnp.ndarray,
    c: float,
    epsilon: float,
    key: jax.Array,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    n = z.shape[0]
    # The objective divided by C * N: the step size then does not depend on C or N.
    def loss(params, idx):
        zb, yb = (z, y) if batch_size >= n else (z[idx], y[idx])
        return svr_objective(params["w"], params["b"], zb, yb, c, epsilon) / (c * zb.shape[0])

    # Adam with a decay to 0 settles at the kinks of the hinge instead of oscillating around them.
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    params = dict(w=jnp.zeros(z.shape[1], jnp.float32), b=jnp.median(y))
    keys = jax.random.split(key, steps)

    def step(carry, k):
        params, opt_state = carry
        idx = jax.random.randint(k, (min(batch_size, n),), 0, n)
        updates, opt_state = opt.update(jax.grad(loss)(params, idx), opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), keys)
    return params["w"], params["b"]


def fit_linear_svr(
    x: np.ndarray,
    y: np.ndarray,
    *,
    c: float = 1.0,
    epsilon: float = 0.1,
    steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Fits `y ~ x @ w + b` by linear epsilon-SVR; `batch_size=None` is full batch.

    `learning_rate` is Adam's initial step in units of `std(y)` (cosine decay to 0 over
    `steps`). Returns `(w [D], b)` for raw features (float64). Deterministic for a given `seed`,
    which only draws minibatches.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"need x [N, D] and y [N], got {x.shape}, {y.shape}")
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 0, std, 1.0)  # Constant features (e.g. dead ReLUs) stay unscaled.
    z = (x - mean) / std
    v, b = _fit(
        jnp.asarray(z, jnp.float32),
        jnp.asarray(y, jnp.float32),
        c,
        epsilon,
        jax.random.PRNGKey(seed),
        steps=steps,
        batch_size=batch_size or x.shape[0],
        learning_rate=learning_rate * max(float(y.std()), 1e-6),
    )
    w = np.asarray(v, np.float64) / std
    return w, float(b) - float(mean @ w)


def predict_linear(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """`x @ w + b` on raw features."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64) + b
