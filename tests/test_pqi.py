"""The PQ Index and SAP (Diao et al., ICLR 2023): sparsejax.pqi, sparsejax.sap and the runner's
``sap`` sparsifier and ``pqi`` metric."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import masks as masks_lib
from sparsejax import pqi, sap, schedules, transforms
from test_hesso import random_grads_step

PQ = st.tuples(st.floats(0.05, 3.0), st.floats(0.05, 3.0)).filter(
    lambda pq: pq[1] - pq[0] > 0.05)


def reference(w, p=0.5, q=1.0):
  """The paper's definition in float64: 1 - d^{1/q - 1/p} ||w||_p / ||w||_q."""
  a = np.abs(np.asarray(w, np.float64)).ravel()
  d = a.size
  return 1.0 - d ** (1 / q - 1 / p) * np.sum(a ** p) ** (1 / p) / np.sum(a ** q) ** (1 / q)


def mlp_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"dense": {"kernel": jax.random.normal(k[0], (12, 10)), "bias": jnp.zeros(10)},
          "hidden": {"kernel": 0.1 * jax.random.laplace(k[1], (10, 8)), "bias": jnp.zeros(8)},
          "output": {"kernel": jax.random.uniform(k[2], (8, 3)), "bias": jnp.zeros(3)}}


# ---------------------------------------------------------------------------------------------
# The PQ Index.


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 4000), pq=PQ, where=st.floats(0.0, 1.0), value=st.floats(1e-3, 1e3),
       sign=st.sampled_from([-1.0, 1.0]))
def test_one_hot_and_constant_vectors_reach_the_limits(d, pq, where, value, sign):
  p, q = pq
  one_hot = np.zeros(d, np.float32)
  one_hot[min(int(where * d), d - 1)] = sign * value
  np.testing.assert_allclose(pqi.pq_index(one_hot, p, q), 1.0 - d ** (1 / q - 1 / p),
                             rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(pqi.pq_index(np.full(d, sign * value, np.float32), p, q), 0.0,
                             atol=2e-6)


def test_exact_values_by_hand():
  # d = 4, p = 1/2, q = 1: ||w||_p = (sum sqrt|w|)^2, I = 1 - ||w||_p / (4 ||w||_1).
  assert float(pqi.pq_index(jnp.array([0.0, 3.0, 0.0, 0.0]))) == pytest.approx(0.75, abs=1e-7)
  assert float(pqi.pq_index(jnp.array([2.0, -2.0, 2.0, 2.0]))) == 0.0
  # [4, 1, 1, 0]: (2 + 1 + 1)^2 / (4 * 6) = 16 / 24.
  assert float(pqi.pq_index(jnp.array([4.0, 1.0, -1.0, 0.0]))) == pytest.approx(1 / 3, rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(2, 500), pq=PQ,
       law=st.sampled_from(["normal", "laplace", "uniform", "sparse"]))
def test_matches_the_definition_in_numpy(seed, size, pq, law):
  rng = np.random.default_rng(seed)
  w = {"normal": rng.normal, "laplace": rng.laplace, "uniform": rng.uniform,
       "sparse": lambda size: rng.normal(size=size) * (rng.random(size) < 0.1)}[law](size=size)
  w = w.astype(np.float32)
  if not np.any(w):
    w[0] = 1.0
  np.testing.assert_allclose(pqi.pq_index(w, *pq), reference(w, *pq), rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), exponent=st.integers(-30, 30), pq=PQ)
def test_scale_invariant_without_underflow_or_overflow(seed, exponent, pq):
  w = np.random.default_rng(seed).normal(size=(17, 5)).astype(np.float32)
  scaled = (w.astype(np.float64) * 10.0 ** exponent).astype(np.float32)
  np.testing.assert_allclose(pqi.pq_index(scaled, *pq), pqi.pq_index(w, *pq), rtol=1e-5,
                             atol=1e-6)


def test_mask_selects_the_retained_entries_and_their_count():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(9, 7)).astype(np.float32)
  mask = rng.random(w.shape) < 0.4
  w_out = np.where(mask, w, np.float32(np.nan))  # pruned entries count for nothing, even NaN
  w_out[~mask & (rng.random(w.shape) < 0.5)] = np.inf
  got = pqi.pq_index(w_out, mask=jnp.asarray(mask))
  np.testing.assert_allclose(got, reference(w[mask]), rtol=1e-5)
  # d is the number retained: a one-hot among k retained entries is 1 - k^{1/q - 1/p}.
  one_hot = np.zeros_like(w)
  one_hot[mask.nonzero()[0][0], mask.nonzero()[1][0]] = 5.0
  np.testing.assert_allclose(pqi.pq_index(one_hot, mask=jnp.asarray(mask)),
                             1.0 - int(mask.sum()) ** (1.0 - 2.0), rtol=1e-6)
  assert float(pqi.pq_index(w, mask=jnp.array(True))) == pytest.approx(float(pqi.pq_index(w)))


def test_no_nonzero_retained_entry_is_defined_as_zero():
  for w, mask in [(jnp.zeros(6), None), (jnp.ones(6), jnp.zeros(6, bool)),
                  (jnp.array([0.0, 0.0, 2.0]), jnp.array([True, True, False]))]:
    value = pqi.pq_index(w, mask=mask)
    chex.assert_tree_all_finite(value)
    assert float(value) == 0.0
  assert int(pqi.prune_count(pqi.pq_index(jnp.zeros(6)), 6)) == 0


class PQIndexVariants(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_inside_and_outside_jit_and_under_vmap(self):
    w = jax.random.normal(jax.random.key(1), (4, 50)) * jnp.array([[1.0], [0.0], [1e-20], [7.0]])
    mask = jax.random.bernoulli(jax.random.key(2), 0.5, (4, 50))
    fn = self.variant(lambda w, m: jax.vmap(lambda a, b: pqi.pq_index(a, 0.5, 1.0, b))(w, m))
    expected = jnp.stack([pqi.pq_index(w[i], mask=mask[i]) for i in range(4)])
    chex.assert_trees_all_close(fn(w, mask), expected, rtol=1e-6)
    chex.assert_tree_all_finite(fn(w, mask))


def test_layer_and_global_indices_over_a_pytree():
  params = mlp_params()
  masks = masks_lib.ones_like(params)
  masks["dense"]["kernel"] = jax.random.bernoulli(jax.random.key(3), 0.3, (12, 10))
  layers = pqi.layer_pq_index(params, masks)
  prunable = {"['dense']['kernel']", "['hidden']['kernel']", "['output']['kernel']"}
  assert set(layers) == prunable  # biases (scalar True masks) have none
  m = np.asarray(masks["dense"]["kernel"])
  np.testing.assert_allclose(layers["['dense']['kernel']"],
                             reference(np.asarray(params["dense"]["kernel"])[m]), rtol=1e-5)
  retained = np.concatenate([np.asarray(params["dense"]["kernel"])[m],
                             np.asarray(params["hidden"]["kernel"]).ravel(),
                             np.asarray(params["output"]["kernel"]).ravel()])
  np.testing.assert_allclose(pqi.global_pq_index(params, masks), reference(retained), rtol=1e-5)
  jitted = jax.jit(lambda p, m: (pqi.global_pq_index(p, m), pqi.layer_pq_index(p, m)))
  chex.assert_trees_all_close(jitted(params, masks), (pqi.global_pq_index(params, masks), layers),
                              rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"p": 1.0, "q": 0.5}, r"p=1.0, q=0.5: the PQ Index needs 0 < p < q"),
    ({"p": 0.0, "q": 1.0}, r"p=0.0, q=1.0"),
    ({"p": 1.0, "q": 1.0}, r"0 < p < q"),
    ({"p": float("nan"), "q": 1.0}, r"p=nan must be a finite real number"),
    ({"p": True, "q": 2.0}, r"p=True must be a finite real number"),
])
def test_bad_p_q_name_the_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pqi.pq_index(jnp.ones(3), **kwargs)
  with pytest.raises(ValueError, match=match):
    sap.sap_pruning(optax.sgd(0.1), schedules.polynomial(0.9, 0, 10, 2), **kwargs)


def test_bad_mask_and_masks_without_prunable_leaves():
  with pytest.raises(ValueError, match="must be bool"):
    pqi.pq_index(jnp.ones(3), mask=jnp.ones(3))
  with pytest.raises(ValueError, match=r"shape \(2,\), but w has shape \(3,\)"):
    pqi.pq_index(jnp.ones(3), mask=jnp.ones(2, bool))
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="no prunable leaf"):
    pqi.global_pq_index(params, {"w": jnp.array(True)})


# ---------------------------------------------------------------------------------------------
# The SAP count.


def sap_count_by_hand(w, p, q, eta_r, gamma, beta):
  d = np.asarray(w).size
  r = d * (1 + eta_r) ** (-q / (q - p)) * (1 - reference(w, p, q)) ** (q * p / (q - p))
  exact = d * min(gamma * (1 - r / d), beta)
  assert abs(exact - round(exact)) > 1e-3 or exact == 0  # away from a rounding boundary
  return r, math.floor(exact)


@pytest.mark.parametrize("p,q,eta_r,gamma,beta", [
    (0.5, 1.0, 0.0, 1.0, 0.9), (0.5, 1.0, 0.001, 1.2, 0.9), (1.0, 2.0, 0.0, 1.0, 0.9),
    (0.2, 1.0, 0.1, 3.0, 0.5), (0.5, 1.0, 0.0, 9.0, 0.9)])
def test_prune_count_is_the_papers_formula(p, q, eta_r, gamma, beta):
  w = np.array([4.0, -1.0, 1.0, 0.25, 0.5, -2.0, 0.0, 0.125, 3.0, 0.75, -0.5], np.float32)
  r, c = sap_count_by_hand(w, p, q, eta_r, gamma, beta)
  index = pqi.pq_index(w, p, q)
  np.testing.assert_allclose(pqi.retained_lower_bound(index, w.size, p=p, q=q, eta_r=eta_r), r,
                             rtol=1e-5)
  got = pqi.prune_count(index, w.size, p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta)
  assert got.dtype == jnp.int32 and int(got) == c


def test_prune_count_by_hand():
  # A one-hot of d = 4 (p = 1/2, q = 1): I = 3/4, r = 4 (1/4) = 1, c = floor(4 min(3/4, 0.9)) = 3.
  assert int(pqi.prune_count(pqi.pq_index(jnp.array([0.0, 0.0, 5.0, 0.0])), 4)) == 3
  # Constant: I = 0, r = d, nothing pruned; with eta_r = 1, r = d / 4: floor(8 * 3/4) = 6.
  assert int(pqi.prune_count(0.0, 8)) == 0
  assert int(pqi.prune_count(0.0, 8, eta_r=1.0)) == 6
  assert int(pqi.prune_count(0.0, 8, eta_r=1.0, beta=0.5)) == 4  # beta caps the ratio
  assert int(pqi.prune_count(0.0, 0, eta_r=1.0)) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": 0.0}, r"gamma=0.0 must be > 0"), ({"gamma": -1.0}, r"gamma=-1.0"),
    ({"beta": 0.0}, r"beta=0.0 must be in \(0, 1\]"), ({"beta": 1.5}, r"beta=1.5"),
    ({"eta_r": -0.1}, r"eta_r=-0.1 must be >= 0"),
    ({"scope": "neuron"}, r"scope='neuron' is not one of \['layer', 'global'\]"),
    ({"max_sparsity": 1.0}, r"max_sparsity=1.0 is outside \[0, 1\)"),
])
def test_bad_sap_hyperparameters_name_the_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sap.sap_pruning(optax.sgd(0.1), schedules.polynomial(0.9, 0, 10, 2), **kwargs)
  with pytest.raises(ValueError, match=match):
    sap.prune_counts(mlp_params(), masks_lib.ones_like(mlp_params()), **kwargs)


def test_prune_counts_per_layer_and_global():
  params = mlp_params()
  masks = masks_lib.ones_like(params)
  counts = sap.prune_counts(params, masks, scope="layer")
  for name in ("dense", "hidden", "output"):
    w = np.asarray(params[name]["kernel"])
    assert int(counts[name]["kernel"]) == sap_count_by_hand(w, 0.5, 1.0, 0.0, 1.0, 0.9)[1]
    assert int(counts[name]["bias"]) == 0
  every = np.concatenate([np.asarray(params[n]["kernel"]).ravel()
                          for n in ("dense", "hidden", "output")])
  assert int(sap.prune_counts(params, masks)) == sap_count_by_hand(every, 0.5, 1.0, 0.0, 1.0,
                                                                   0.9)[1]


# ---------------------------------------------------------------------------------------------
# sap_pruning inside jit.


def train(opt, params, steps, seed=0):
  """(params, masks) before each step and after the last, from a jitted step on random grads."""
  state = opt.init(params)
  step = random_grads_step(opt)
  history = [(params, transforms.get_masks(state))]
  for t in range(steps):
    params, state = step(params, state, jax.random.fold_in(jax.random.key(seed), t))
    history.append((params, transforms.get_masks(state)))
  return history


def kept(masks):
  return {n: int(masks[n]["kernel"].sum()) for n in ("dense", "hidden", "output")}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sap_pruning_prunes_the_formulas_count_on_schedule_steps(scope):
  schedule = schedules.polynomial(0.9, 2, 10, 3)  # steps 2, 5, 8 and 10
  opt = sap.sap_pruning(optax.adam(0.05), schedule, scope=scope, gamma=2.0)
  history = train(opt, mlp_params(), 12)
  for t in range(12):
    (params, before), (after_params, after) = history[t], history[t + 1]
    assert int(masks_lib.violations(after_params, after)) == 0, t  # pruned weights exactly 0.0
    for name in ("dense", "hidden", "output"):
      old, new = np.asarray(before[name]["kernel"]), np.asarray(after[name]["kernel"])
      assert not np.any(new & ~old), (t, name)  # masks only shrink
    counts = sap.prune_counts(params, before, scope=scope, gamma=2.0)
    pruned = {n: kept(before)[n] - kept(after)[n] for n in kept(before)}
    if not bool(schedule.is_update_step(t)):
      assert not any(pruned.values()), t
    elif scope == "global":
      assert sum(pruned.values()) == int(counts) > 0, t
    else:
      assert pruned == {n: int(counts[n]["kernel"]) for n in pruned}, t
      assert all(pruned.values()), t
    # The smallest magnitudes among the survivors went (of each layer, or of all of them).
    groups = [[n] for n in kept(before)] if scope == "layer" else [list(kept(before))]
    for names in groups:
      w, old, new = (np.concatenate([np.asarray(x[n]["kernel"]).ravel() for n in names])
                     for x in (params, before, after))
      if np.any(old & ~new):
        assert np.abs(w[old & ~new]).max() <= np.abs(w[new]).min(), (t, names)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_max_sparsity_caps_the_density(scope):
  params = mlp_params(1)
  opt = sap.sap_pruning(optax.sgd(0.01), schedules.polynomial(0.5, 0, 8, 1), scope=scope,
                        gamma=20.0, beta=0.9, max_sparsity=0.7)
  sizes = {n: params[n]["kernel"].size for n in ("dense", "hidden", "output")}
  history = train(opt, params, 9)
  for _, masks in history:
    if scope == "layer":
      assert all(kept(masks)[n] >= round(0.3 * sizes[n]) for n in sizes), kept(masks)
    else:
      assert sum(kept(masks).values()) >= round(0.3 * sum(sizes.values()))
  final = kept(history[-1][1])
  if scope == "layer":  # gamma = 20 prunes to the cap of each layer
    assert final == {n: round(0.3 * sizes[n]) for n in sizes}
  else:
    assert sum(final.values()) == round(0.3 * sum(sizes.values()))


# ---------------------------------------------------------------------------------------------
# The runner: the sap sparsifier and the pqi metric.


def test_runner_sap_writes_pqi(tmp_path):
  from experiments import experiment
  from test_runner import digits_config, read_masks
  config = digits_config(sparsifier="sap", steps="100it", sap_begin="10it", sap_end="80%",
                         sap_every="10it", sap_gamma=3.0, final_sparsity=0.8, eval_every="50it",
                         log_every="50it", checkpoint_every="100it")
  summary = experiment.run(config, str(tmp_path))
  assert summary["sparsifier"] == "sap"
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  logged = [r for r in rows if "density" in r]
  assert [r["step"] for r in logged] == [50, 100]
  layers = {"pqi/dense1/kernel", "pqi/dense2/kernel", "pqi/output/kernel"}
  for row in logged:
    assert 0.0 < row["pqi"] < 1.0 and layers <= set(row)
    assert not {k for k in row if k.startswith("pqi/")} - layers
  assert summary["pqi"] == pytest.approx(logged[-1]["pqi"])
  masks = read_masks(tmp_path)
  total = sum(m.size for m in masks.values())
  assert sum(int(m.sum()) for m in masks.values()) >= round(0.2 * total)  # the cap
  assert summary["density"] < 1.0 and logged[0]["density"] > summary["density"] - 1e-9


def test_pqi_is_logged_for_vectorized_replicates(tmp_path):
  from experiments import experiment
  from test_runner import digits_config
  config = digits_config(sparsifier="sap", steps="40it", sap_begin="10it", sap_end="30it",
                         sap_every="10it", sap_scope="layer", eval_every="40it",
                         log_every="40it", checkpoint_every="40it", replicates=2,
                         vectorize=True)
  summary = experiment.run(config, str(tmp_path))
  assert len(summary["runs"]) == 2 and "pqi_sd" in summary
  for run in summary["runs"]:
    assert 0.0 < run["pqi"] < 1.0
  for i in range(2):
    rows = [json.loads(line) for line in (tmp_path / f"replicate_{i}" / "metrics.jsonl").open()]
    assert rows[-1]["pqi"] == pytest.approx(summary["runs"][i]["pqi"])


@pytest.mark.parametrize("overrides,match", [
    ({"sap_p": 1.0, "sap_q": 0.5}, r"sap_p=1.0, sap_q=0.5: .*0 < p < q"),
    ({"sap_scope": "neuron"}, r"sap_scope='neuron' is not one of"),
    ({"sap_gamma": 0.0}, r"sap_gamma: gamma=0.0 must be > 0"),
    ({"sap_beta": 1.5}, r"sap_beta: beta=1.5"),
    ({"sap_eta": -1.0}, r"sap_eta: eta_r=-1.0"),
    ({"sap_end": "soon"}, r"sap_end='soon' is not a duration"),
    ({"sap_begin": "250it", "sap_end": "200it"}, r"sap_begin='250it' \(step 250\) and "
     r"sap_end='200it' \(step 200\) must satisfy"),
    ({"final_sparsity": 1.0}, r"final_sparsity=1.0 is outside"),
])
def test_runner_config_errors_name_the_key(tmp_path, overrides, match):
  from experiments import experiment
  from experiments.config import ConfigError
  from test_runner import digits_config
  with pytest.raises(ConfigError, match=match):
    experiment.run(digits_config(sparsifier="sap", **overrides), str(tmp_path))


def test_metric_names_of_key_paths():
  from experiments import trainer
  assert trainer.metric_name("['dense1']['kernel']") == "dense1/kernel"
  assert trainer.metric_name("['blocks'][0]['conv'].kernel.value") == "blocks/0/conv/kernel"
