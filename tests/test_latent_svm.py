# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the latent ranking SVM: loss, model, k-means init, binarised accuracy (the SVR
baseline: tests/test_svr.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from ipa_jax import losses, metrics
from ipa_jax.kmeans import kmeans
from ipa_jax.models import latent_svm

# Four images; image 3 ties with image 1, so the viable pairs (y_i > y_j) are
# (0,1), (0,2), (1,2), (0,3), (3,2).
Y = np.array([3.0, 1.0, 0.5, 1.0])
F_POP = np.array([1.5, 1.0, 0.0, 0.7])
F_UNPOP = np.array([0.0, 0.2, 1.0, 0.4])


def _loss(f_pop, f_unpop, y, **kw):
    return float(losses.latent_ranking_hinge(jnp.asarray(f_pop), jnp.asarray(f_unpop), y, **kw))


@pytest.mark.parametrize(
    "margin, use_unpopular, expected",
    [
        # Popular hinge(1 - f+_i + f+_j): (0,1) .5, (0,2) 0, (1,2) 0, (0,3) .2, (3,2) .3 -> 1.0 / 5.
        ("fixed", False, 1.0 / 5),
        # Unpopular hinge(1 - f-_j + f-_i): (0,1) .8, (0,2) 0, (1,2) .2, (0,3) .6, (3,2) .4 -> 2.0;
        # (1.0 + 2.0) / 5.
        ("fixed", True, 3.0 / 5),
        # D = max(1, y_i - y_j): (0,1) 2, (0,2) 2.5, (1,2) 1, (0,3) 2, (3,2) 1.
        # Popular: 2-1.5+1 = 1.5, 2.5-1.5+0 = 1.0, 1-1+0 = 0, 2-1.5+.7 = 1.2, 1-.7+0 = .3 -> 4.0.
        ("soft", False, 4.0 / 5),
        # Unpopular: 2-.2+0 = 1.8, 2.5-1+0 = 1.5, 1-1+.2 = .2, 2-.4+0 = 1.6, 1-1+.4 = .4 -> 5.5.
        ("soft", True, (4.0 + 5.5) / 5),
    ],
)
def test_loss_hand_computed(margin, use_unpopular, expected):
    got = _loss(F_POP, F_UNPOP, Y, margin=margin, use_unpopular=use_unpopular)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_loss_delta_and_alpha():
    # Images 0..2 only. delta = 2: (0,1) 2-1.5+1 = 1.5, (0,2) 2-1.5 = .5, (1,2) 2-1 = 1 -> 3 / 3.
    got = _loss(F_POP[:3], F_UNPOP[:3], Y[:3], delta=2.0, use_unpopular=False)
    np.testing.assert_allclose(got, 1.0, rtol=1e-6)
    # alpha = 3: D = max(3, y_i - y_j) = 3 everywhere: 1.5+1 = 2.5, 3-1.5 = 1.5, 3-1 = 2 -> 6 / 3.
    got = _loss(F_POP[:3], F_UNPOP[:3], Y[:3], margin="soft", alpha=3.0, use_unpopular=False)
    np.testing.assert_allclose(got, 2.0, rtol=1e-6)


def test_loss_mask_ignores_rows():
    # A padded row that would dominate every pair if it counted.
    f_pop, f_unpop, y = np.r_[F_POP, -50.0], np.r_[F_UNPOP, 50.0], np.r_[Y, 100.0]
    mask = np.array([True, True, True, True, False])
    for margin in ("fixed", "soft"):
        full = _loss(F_POP, F_UNPOP, Y, margin=margin, use_unpopular=True)
        masked = _loss(f_pop, f_unpop, y, margin=margin, use_unpopular=True, mask=mask)
        np.testing.assert_allclose(masked, full, rtol=1e-6)
    # Masking out image 3 leaves pairs (0,1), (0,2), (1,2): popular .5 + 0 + 0, unpopular .8 + 0
    # + .2 (fixed margin) -> 1.5 / 3.
    got = _loss(F_POP, F_UNPOP, Y, use_unpopular=True, mask=np.array([1, 1, 1, 0], bool))
    np.testing.assert_allclose(got, 0.5, rtol=1e-6)


def test_loss_matches_loop():
    rng = np.random.default_rng(0)
    f_pop, f_unpop = rng.normal(size=12), rng.normal(size=12)
    y = rng.integers(0, 5, 12).astype(np.float64)
    terms = []
    for i in range(12):
        for j in range(12):
            if y[i] > y[j]:
                d = max(0.7, y[i] - y[j])
                terms.append(max(0, d - f_pop[i] + f_pop[j]) + max(0, d - f_unpop[j] + f_unpop[i]))
    got = _loss(f_pop, f_unpop, y, margin="soft", alpha=0.7, use_unpopular=True)
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_loss_without_pairs_is_zero():
    f = jnp.array([0.3, -0.2, 0.5])
    fn = lambda f, y, mask=None: losses.latent_ranking_hinge(  # noqa: E731
        f, -f, y, margin="soft", use_unpopular=True, mask=mask
    )
    assert float(fn(f, jnp.ones(3))) == 0.0  # All ties.
    assert float(fn(f, jnp.arange(3.0), jnp.array([False, True, False]))) == 0.0
    grad = jax.grad(fn)(f, jnp.ones(3))
    np.testing.assert_array_equal(grad, np.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        losses.latent_ranking_hinge(f, f, jnp.arange(3.0), margin="hard", use_unpopular=False)


def test_one_sense_equals_plain_svm():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    plain = latent_svm.LatentSenses(num_popular=0)
    one = latent_svm.LatentSenses(num_popular=1)
    params = {"popular": jnp.asarray(w[None])}
    out_plain = plain.apply({"params": params}, x)
    out_one = one.apply({"params": params}, x)
    np.testing.assert_allclose(out_plain["score"], x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out_plain["score"], out_one["score"])
    np.testing.assert_array_equal(out_plain["f_unpop"], np.zeros(7))
    assert out_plain["unpop_senses"].shape == (7, 0)
    init = plain.init(jax.random.PRNGKey(0), x)["params"]
    assert set(init) == {"popular"} and init["popular"].shape == (1, 5)


def test_latent_max_over_senses():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 6)).astype(np.float32)
    w_pop, w_unpop = rng.normal(size=(3, 6)), rng.normal(size=(2, 6))
    b_pop, b_unpop = rng.normal(size=3), rng.normal(size=2)
    model = latent_svm.LatentSenses(num_popular=3, num_unpopular=2, use_bias=True)
    params = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32),
        dict(popular=w_pop, unpopular=w_unpop, popular_bias=b_pop, unpopular_bias=b_unpop),
    )
    out = model.apply({"params": params}, x)
    pop, unpop = x @ w_pop.T + b_pop, x @ w_unpop.T + b_unpop
    np.testing.assert_allclose(out["pop_senses"], pop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["unpop_senses"], unpop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["f_pop"], pop.max(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["f_unpop"], unpop.max(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["score"], pop.max(1) - unpop.max(1), rtol=1e-5, atol=1e-5)


def test_random_init_is_small_normal():
    params = latent_svm.init_params(jax.random.PRNGKey(0), 500, 4, 3, init="random")
    assert params["popular"].shape == (4, 500) and params["unpopular"].shape == (3, 500)
    np.testing.assert_allclose(np.std(params["popular"]), 0.01, rtol=0.05)
    with pytest.raises(ValueError, match="init"):
        latent_svm.init_params(jax.random.PRNGKey(0), 5, 1, 0, init="zeros")


def _assert_centroids_of(senses, rows):
    """Each sense is the mean of the `rows` nearest to it (a k-means fixed point)."""
    senses = np.asarray(senses, np.float64)
    d = ((rows[:, None, :] - senses[None]) ** 2).sum(-1)
    labels = d.argmin(1)
    for s in range(senses.shape[0]):
        assert np.any(labels == s)
        np.testing.assert_allclose(senses[s], rows[labels == s].mean(0), atol=1e-5)


def test_kmeans_init_uses_extreme_rows():
    rng = np.random.default_rng(2)
    n, top_k = 400, 60
    y = rng.permutation(n).astype(np.float64)
    features = rng.normal(size=(n, 8))
    # Only the extremes sit far out on axis 0, so a sense built from other rows would show it.
    top, bottom = np.argsort(-y)[:top_k], np.argsort(y)[:top_k]
    features[top, 0] += 20.0
    features[bottom, 0] -= 20.0
    params = latent_svm.kmeans_init_params(features, y, 3, 2, top_k=top_k, seed=0)
    assert params["popular"].shape == (3, 8) and params["unpopular"].shape == (2, 8)
    _assert_centroids_of(params["popular"], features[top])
    _assert_centroids_of(params["unpopular"], features[bottom])
    assert np.all(params["popular"][:, 0] > 15) and np.all(params["unpopular"][:, 0] < -15)
    # init_params with the same data gives a k-means fixed point too, and the model runs on it.
    params = latent_svm.init_params(
        jax.random.PRNGKey(3), 8, 0, 0, init="kmeans", features=features, y=y, top_k=top_k
    )
    np.testing.assert_allclose(params["popular"][0], features[top].mean(0), atol=1e-5)
    assert set(params) == {"popular"}


def test_kmeans_init_small_split():
    rng = np.random.default_rng(3)
    features, y = rng.normal(size=(5, 3)), rng.normal(size=5)
    params = latent_svm.kmeans_init_params(features, y, 0, 1, top_k=1000)
    # Fewer rows than top_k: all five rows, one cluster each -> their mean.
    np.testing.assert_allclose(params["popular"][0], features.mean(0), atol=1e-6)
    np.testing.assert_allclose(params["unpopular"][0], features.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="fewer senses than rows"):
        latent_svm.kmeans_init_params(features, y, 5, 0)


def test_kmeans_recovers_blobs():
    rng = np.random.default_rng(4)
    means = np.array([[0.0, 0, 0, 0], [5, 5, 0, 0], [0, -5, 5, 5]])
    labels_true = rng.integers(0, 3, 600)
    x = means[labels_true] + 0.2 * rng.normal(size=(600, 4))
    centroids, labels = kmeans(x, 3, seed=0)
    match = ((centroids[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert sorted(match) == [0, 1, 2]
    np.testing.assert_allclose(centroids, means[match], atol=0.1)
    np.testing.assert_array_equal(match[labels], labels_true)
    again, _ = kmeans(x, 3, seed=0)
    np.testing.assert_array_equal(again, centroids)


def _brute_force_sample(y, top_fraction, seed):
    n = len(y)
    num_pos = int(round(top_fraction * n))
    ranked = sorted(range(n), key=lambda i: (-y[i], i))  # Ties: lower row index first.
    pos, rest = ranked[:num_pos], sorted(ranked[num_pos:])
    neg = np.random.default_rng(seed).choice(rest, num_pos, replace=False)
    return pos, list(neg)


def test_binarised_accuracy_brute_force():
    rng = np.random.default_rng(6)
    for trial in range(5):
        n = 50 + 7 * trial
        y = rng.integers(0, 8, n).astype(np.float64)  # Ties, also at the cut.
        scores = y + rng.normal(size=n)
        threshold = float(rng.normal() + 4)
        pos, neg = _brute_force_sample(y, 0.2, seed=trial)
        correct = sum(scores[i] > threshold for i in pos) + sum(scores[i] <= threshold for i in neg)
        expected = correct / (len(pos) + len(neg))
        got = metrics.binarised_accuracy(scores, y, threshold, seed=trial)
        assert got == pytest.approx(expected, abs=1e-12)


def test_binarised_perfect_scores():
    rng = np.random.default_rng(7)
    y_train, y_test = rng.normal(size=300), rng.normal(size=200)
    threshold = metrics.binarised_threshold(2 * y_train + 1, y_train)
    assert metrics.binarised_accuracy(2 * y_test + 1, y_test, threshold) == 1.0
    assert metrics.binarised_accuracy(-y_test, y_test, 0.0) < 0.5
    with pytest.raises(ValueError, match="top_fraction"):
        metrics.binarised_accuracy(y_test, y_test, 0.0, top_fraction=0.6)


def test_binarised_accuracy_draws_spread_over_negatives():
    rng = np.random.default_rng(9)
    y_train, y_test = rng.normal(size=400), rng.normal(size=300)
    train_s, test_s = y_train + rng.normal(size=400), y_test + rng.normal(size=300)
    draws = metrics.binarised_accuracy_draws(train_s, y_train, test_s, y_test, num_draws=8)
    assert draws.shape == (8,)
    for k in range(8):  # draw k: seed k for the training threshold and the test negatives
        t = metrics.binarised_threshold(train_s, y_train, seed=k)
        assert draws[k] == metrics.binarised_accuracy(test_s, y_test, t, seed=k)
    assert draws[0] == metrics.binarised_accuracy(
        test_s, y_test, metrics.binarised_threshold(train_s, y_train))  # the single draw
    assert draws.std() > 0  # the negatives move the accuracy
    with pytest.raises(ValueError, match="num_draws"):
        metrics.binarised_accuracy_draws(train_s, y_train, test_s, y_test, num_draws=0)


def test_binarised_threshold_maximises_train_accuracy():
    rng = np.random.default_rng(8)
    for seed in range(4):
        y = rng.normal(size=120)
        scores = np.round(y + rng.normal(size=120), 1)  # Tied scores.
        threshold = metrics.binarised_threshold(scores, y, seed=seed)
        best = max(
            metrics.binarised_accuracy(scores, y, t, seed=seed)
            for t in np.r_[-np.inf, np.unique(scores)]
        )
        assert metrics.binarised_accuracy(scores, y, threshold, seed=seed) == best


def _train_spearman(num_popular, x, y, x_test, y_test, steps=150):
    model = latent_svm.LatentSenses(num_popular)
    params = latent_svm.init_params(jax.random.PRNGKey(0), x.shape[1], num_popular, 0, "random")
    opt = optax.sgd(0.05)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            out = model.apply({"params": p}, xb)
            return losses.latent_ranking_hinge(
                out["f_pop"], out["f_unpop"], yb, margin="soft", use_unpopular=False
            )

        updates, opt_state = opt.update(jax.grad(loss_fn)(params), opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        idx = rng.choice(len(y), 100, replace=False)
        params, opt_state = step(params, opt_state, x[idx], y[idx])
    scores = model.apply({"params": params}, x_test)["score"]
    return stats.spearmanr(scores, y_test).statistic


def test_latent_senses_beat_linear_on_max_of_two_directions():
    rng = np.random.default_rng(9)
    x, x_test = rng.normal(size=(2, 2000, 16)).astype(np.float32)
    # y = max(x_0, x_1): a linear score can reach Spearman ~0.85 at best, two senses ~1.
    y, y_test = x[:, :2].max(1), x_test[:, :2].max(1)
    linear = _train_spearman(0, x, y, x_test, y_test)
    latent = _train_spearman(2, x, y, x_test, y_test)
    assert latent > 0.97 and linear < 0.9 and latent > linear + 0.08
