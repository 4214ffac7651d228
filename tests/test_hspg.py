"""HSPG and DHSPG: the half-space projection, the partition, the adaptive lambda, exact zeros."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sparsejax.structured import groups as groups_lib
from sparsejax.structured import hspg as hspg_lib

# name: (learning rate, the inner optimizer with that learning rate)
INNER = {
    "sgd": (0.1, optax.sgd),
    "momentum": (0.1, lambda lr: optax.sgd(lr, momentum=0.9)),
    "adam": (0.05, optax.adam),
    "adamw": (0.05, lambda lr: optax.adamw(lr, weight_decay=0.1)),
}

# Two groups, the columns of w: x_0 = (1, 0), x_1 = (0, 2). b is outside the groups.
TWO = groups_lib.declare([("cols", 2, [("['w']", 1)], [])])


def two_params():
  return {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "b": jnp.array([1.0])}


def two_grads():
  return {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.array([2.0])}


# A dense layer of 10 channels (kernel columns and bias entries) and an output layer of 3.
MLP = groups_lib.declare([
    ("dense", 10, [("['dense']['kernel']", 1), ("['dense']['bias']", 0)],
     [("['out']['kernel']", 0)]),
    ("out", 3, [("['out']['kernel']", 1)], []),
])


def mlp_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"dense": {"kernel": jax.random.normal(k[0], (6, 10)),
                    "bias": 0.1 * jax.random.normal(k[1], (10,))},
          "out": {"kernel": jax.random.normal(k[2], (10, 3)), "bias": jnp.zeros((3,))}}


def random_grads(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def group_matrix(params, name):
  """``(n_g, size)`` numpy: each column one group of the set ``name`` of MLP."""
  if name == "dense":
    return np.concatenate([np.asarray(params["dense"]["kernel"]),
                           np.asarray(params["dense"]["bias"])[None]], axis=0)
  return np.asarray(params["out"]["kernel"])


def numpy_flat(params):
  """The G groups of MLP as a list of 1-D numpy vectors, in group order."""
  return [group_matrix(params, s)[:, j] for s in ("dense", "out")
          for j in range(group_matrix(params, s).shape[1])]


def params_like_parts(inner, inner_state):
  """Every params-shaped part of an inner optimizer state (momenta, Adam moments)."""
  parts = []
  optax.tree_utils.tree_map_params(inner, parts.append, inner_state, is_leaf=lambda _: True)
  return parts


class HalfSpaceProjectionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("constant", 0.5), ("schedule", optax.constant_schedule(0.5)))
  def test_crossing_group_is_zeroed_and_the_other_kept(self, learning_rate):
    # a = 0.5, lambda = 0.2: x'_0 = (1,0) - 0.5 (3,0) - 0.1 (1,0) = (-0.6, 0): x'_0 . x_0 < 0.
    # x'_1 = (0,2) - 0.5 (0,1) - 0.1 (0,1) = (0, 1.4): x'_1 . x_1 = 2.8 > 0.
    opt = hspg_lib.hspg(optax.sgd(learning_rate), TWO, learning_rate=learning_rate, lmbda=0.2,
                        epsilon=0.0, start_step=0)
    params = two_params()
    updates, state = self.variant(opt.update)(two_grads(), opt.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], [[0.0, 0.0], [0.0, 1.4]], rtol=1e-6)
    np.testing.assert_array_equal(new["w"][:, 0], 0.0)
    np.testing.assert_allclose(new["b"], [0.0])  # outside the groups: the plain step
    np.testing.assert_array_equal(state.zero, [True, False])
    np.testing.assert_array_equal(hspg_lib.zero_groups(state), [True, False])
    self.assertEqual(int(state.count), 1)

  @chex.variants(with_jit=True, without_jit=True)
  def test_epsilon_widens_the_half_space(self):
    # x'_1 . x_1 / ||x_1||^2 = 2.8 / 4 = 0.7: kept at epsilon 0.6, zeroed at 0.8.
    params = two_params()
    for epsilon, zero in ((0.6, [True, False]), (0.8, [True, True])):
      opt = hspg_lib.hspg(optax.sgd(0.5), TWO, learning_rate=0.5, lmbda=0.2, epsilon=epsilon,
                          start_step=0)
      updates, state = self.variant(opt.update)(two_grads(), opt.init(params), params)
      np.testing.assert_array_equal(state.zero, zero)
      w = optax.apply_updates(params, updates)["w"]
      np.testing.assert_array_equal(np.asarray(w)[:, np.asarray(zero)], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_stage_one_takes_subgradient_steps_without_projection(self):
    opt = hspg_lib.hspg(optax.sgd(0.5), TWO, learning_rate=0.5, lmbda=0.2, epsilon=0.0,
                        start_step=1)
    params = two_params()
    updates, state = self.variant(opt.update)(two_grads(), opt.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"],
                               [[-0.6, 0.0], [0.0, 1.4]], rtol=1e-6)
    np.testing.assert_array_equal(state.zero, [False, False])

  def test_zero_group_stays_zero_against_its_gradient(self):
    opt = hspg_lib.hspg(optax.sgd(0.5, momentum=0.9), TWO, learning_rate=0.5, lmbda=0.2,
                        epsilon=0.0, start_step=0)
    params = two_params()
    state = opt.init(params)
    step = jax.jit(opt.update)
    for i in range(5):
      updates, state = step(two_grads() if i == 0 else random_grads(jax.random.key(i), params),
                            state, params)
      params = optax.apply_updates(params, updates)
      np.testing.assert_array_equal(params["w"][:, 0], 0.0)
      self.assertTrue(bool(state.zero[0]))
    momentum = params_like_parts(optax.sgd(0.5, momentum=0.9), state.inner_state)
    self.assertLen(momentum, 1)
    np.testing.assert_array_equal(momentum[0]["w"][:, 0], 0.0)
    self.assertGreater(float(jnp.abs(momentum[0]["b"]).max()), 0.0)


def numpy_scores(params, direction):
  """The saliency score of OTOv2's partition, computed group by group in float64."""
  xs, ds = numpy_flat(params), numpy_flat(direction)
  cos = np.array([x @ d / max(np.linalg.norm(x) * np.linalg.norm(d), 1e-8)
                  for x, d in zip(xs, ds)])
  small = np.array([1.0 / (np.linalg.norm(x) / x.size + 1e-6) for x in xs])
  return 0.5 * cos / np.linalg.norm(cos) + 0.5 * small / np.linalg.norm(small)


def numpy_lmbda(x_dot_d, x_norm, d_sq, lmbda, amplify, coeff):
  if x_dot_d >= 0 or x_norm == 0:
    return lmbda
  lower, upper = -x_dot_d / x_norm, -d_sq * x_norm / x_dot_d
  lam = min(max(amplify * lower, lmbda), lmbda * coeff)
  return (lower + upper) / 2 if lam >= upper else lam


class DHSPGPartitionTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters((0.3, 0.1), (0.0, 0.2))
  def test_partition_is_the_top_scores(self, target, tolerance):
    # With SGD the inner direction d is the gradient.
    opt = hspg_lib.dhspg(optax.sgd(0.01), MLP, target, learning_rate=0.01, start_step=2,
                         tolerance=tolerance)
    update = self.variant(opt.update)
    params = mlp_params()
    state = opt.init(params)
    for i in range(4):
      grads = random_grads(jax.random.key(10 + i), params)
      updates, state = update(grads, state, params)
      if i < 2:
        self.assertFalse(bool(state.penalized.any()))
      if i == 2:
        k = int(13 * (target + tolerance))
        want = np.zeros(13, bool)
        want[np.argsort(-numpy_scores(params, grads))[:k]] = True
        np.testing.assert_array_equal(state.penalized, want)
        self.assertEqual(int(state.penalized.sum()), k)
        chosen = np.asarray(state.penalized)
      if i == 3:  # chosen once
        np.testing.assert_array_equal(state.penalized, chosen)
      params = optax.apply_updates(params, updates)

  def test_saliency_scores_match_numpy(self):
    params, direction = mlp_params(1), random_grads(jax.random.key(3), mlp_params(1))
    np.testing.assert_allclose(hspg_lib.saliency_scores(MLP, params, direction),
                               numpy_scores(params, direction), rtol=1e-5)

  def test_adaptive_lmbda_hand_examples(self):
    # (x.d, ||x||, ||d||^2, lambda, want) with amplify 1.1 and cap 10:
    cases = [
        (0.3, 1.0, 1.0, 0.01, 0.01),  # x.d >= 0: the plain lambda
        (-0.001, 1.0, 1.0, 0.01, 0.01),  # 1.1 * 0.001 below lambda: clipped up
        (-0.05, 1.0, 1.0, 0.01, 0.055),  # 1.1 * lower = 0.055 inside [0.01, 0.1]
        (-0.5, 1.0, 1.0, 0.01, 0.1),  # 1.1 * 0.5 above the cap 0.1: clipped down
        # lower 0.04, upper 0.0025/0.04 = 0.0625; clip(0.044, 0.1, 1) = 0.1 >= upper:
        (-0.04, 1.0, 0.0025, 0.1, (0.04 + 0.0625) / 2),
        (-0.1, 2.0, 1.0, 0.01, 0.05 * 1.1),  # lower = 0.1 / 2, upper = 20
        (0.0, 0.0, 1.0, 0.01, 0.01),  # a zero group
    ]
    for x_dot_d, x_norm, d_sq, lmbda, want in cases:
      self.assertAlmostEqual(numpy_lmbda(x_dot_d, x_norm, d_sq, lmbda, 1.1, 10.0), want)
      got = hspg_lib.adaptive_lmbda(jnp.array([x_dot_d]), jnp.array([x_norm]), jnp.array([d_sq]),
                                    lmbda, 1.1, 10.0)
      np.testing.assert_allclose(got, [want], rtol=1e-6)

  @chex.variants(with_jit=True)
  def test_penalized_groups_step_with_adaptive_lmbda_others_plain(self):
    lr, lmbda = 0.01, 0.05
    opt = hspg_lib.dhspg(optax.sgd(lr), MLP, 0.4, learning_rate=lr, start_step=0, lmbda=lmbda,
                         lmbda_amplify=2.0, hat_lmbda_coeff=10.0, tolerance=0.1)
    params = mlp_params(2)
    grads = random_grads(jax.random.key(7), params)
    updates, state = self.variant(opt.update)(grads, opt.init(params), params)
    self.assertFalse(bool(state.zero.any()))  # small steps: nothing crosses
    new = numpy_flat(optax.apply_updates(params, updates))
    for g, (x, d, x_new) in enumerate(zip(numpy_flat(params), numpy_flat(grads), new)):
      want = x - lr * d
      if state.penalized[g]:
        lam = numpy_lmbda(x @ d, np.linalg.norm(x), d @ d, lmbda, 2.0, 10.0)
        want = want - lr * lam * x / np.linalg.norm(x)
      np.testing.assert_allclose(x_new, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["out"]["bias"],
                               -lr * np.asarray(grads["out"]["bias"]), rtol=1e-6)


class ExactZerosTest(parameterized.TestCase):

  @parameterized.parameters(*[(inner, "hspg") for inner in INNER],
                            ("momentum", "dhspg"), ("adamw", "dhspg"))
  def test_zero_groups_stay_exactly_zero_in_params_and_inner_state(self, inner, algorithm):
    lr, make = INNER[inner]
    if algorithm == "hspg":
      opt = hspg_lib.hspg(make(lr), MLP, learning_rate=lr, lmbda=1.0, epsilon=0.5, start_step=2)
    else:
      opt = hspg_lib.dhspg(make(lr), MLP, 0.5, learning_rate=lr, start_step=2, lmbda=1.0,
                           lmbda_amplify=2.0, epsilon=0.5, tolerance=0.2)

    traces = []

    @jax.jit
    def step(params, state, key):
      traces.append(1)
      # The gradient of ||x||^2 / 2 plus noise: groups drift toward zero, and some cross.
      grads = jax.tree.map(lambda g, p: 0.5 * g + p, random_grads(key, params), params)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    is_zero = jax.jit(lambda tree: groups_lib.is_zero(MLP, tree))
    params = jax.tree.map(lambda x: 0.3 * x, mlp_params())
    state = opt.init(params)
    zero = np.zeros(13, bool)
    for i in range(30):
      params, state = step(params, state, jax.random.key(i))
      now = np.asarray(hspg_lib.zero_groups(state))
      self.assertTrue(np.all(now[zero]))  # once zero, zero for good
      if i < 2:  # before start_step: no projection
        self.assertFalse(now.any())
      zero = now
      np.testing.assert_array_equal(np.asarray(is_zero(params))[zero], True)
      if algorithm == "dhspg":
        self.assertTrue(np.all(np.asarray(state.penalized)[zero]))
    self.assertGreater(zero.sum(), 0)
    self.assertLen(traces, 1)  # the stages and the partition switch without recompiling
    parts = params_like_parts(make(lr), state.inner_state)
    if inner != "sgd":
      self.assertNotEmpty(parts)
    for part in parts:
      np.testing.assert_array_equal(np.asarray(is_zero(part))[zero], True)


class TrainingTest(parameterized.TestCase):

  def test_dhspg_mlp_ends_with_zero_groups_inside_the_penalized_set(self):
    groups = groups_lib.declare([("hidden", 16, [("['h']['kernel']", 1), ("['h']['bias']", 0)],
                                  [("['o']['kernel']", 0)])])
    k = jax.random.split(jax.random.key(0), 3)
    params = {"h": {"kernel": jax.random.normal(k[0], (8, 16)) / np.sqrt(8.0),
                    "bias": jnp.zeros((16,))},
              "o": {"kernel": jax.random.normal(k[1], (16, 1)) / 4.0, "bias": jnp.zeros((1,))}}
    x = jax.random.normal(k[2], (256, 8))
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2]

    def apply(p, inputs):
      return jax.nn.relu(inputs @ p["h"]["kernel"] + p["h"]["bias"]) @ p["o"]["kernel"] + \
          p["o"]["bias"]

    loss = lambda p: jnp.mean((apply(p, x) - y) ** 2)
    groups_lib.validate(groups, params, apply, x)
    opt = hspg_lib.dhspg(optax.sgd(0.05, momentum=0.9), groups, 0.5, learning_rate=0.05,
                         start_step=20, lmbda=0.5, lmbda_amplify=2.0, epsilon=0.5)

    @jax.jit
    def train(params, state):
      def body(carry, _):
        p, s = carry
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, updates), s), None
      return jax.lax.scan(body, (params, state), None, length=150)[0]

    start = loss(params)
    params, state = train(params, opt.init(params))
    zero = np.asarray(hspg_lib.zero_groups(state))
    penalized = np.asarray(state.penalized)
    self.assertEqual(penalized.sum(), int(16 * 0.55))
    self.assertGreater(zero.sum(), 0)
    self.assertTrue(np.all(penalized[zero]))
    np.testing.assert_array_equal(np.asarray(groups_lib.is_zero(groups, params)), zero)
    self.assertLess(float(loss(params)), 0.05 * float(start))


class ArgumentsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("lr_zero", "hspg", dict(learning_rate=0.0), "learning_rate=0.0"),
      ("lr_string", "hspg", dict(learning_rate="fast"), "learning_rate='fast'"),
      ("lmbda_negative", "hspg", dict(lmbda=-1.0), "lmbda=-1.0"),
      ("epsilon_one", "hspg", dict(epsilon=1.0), r"epsilon=1.0 must be in \[0, 1\)"),
      ("epsilon_nan", "hspg", dict(epsilon=float("nan")), "epsilon=nan"),
      ("start_float", "hspg", dict(start_step=1.5), "start_step=1.5"),
      ("start_negative", "dhspg", dict(start_step=-1), "start_step=-1"),
      ("target_one", "dhspg", dict(target_group_sparsity=1.0), "target_group_sparsity=1.0"),
      ("tolerance", "dhspg", dict(tolerance=-0.1), "tolerance=-0.1"),
      ("amplify", "dhspg", dict(lmbda_amplify=0.5), "lmbda_amplify=0.5 must be >= 1"),
      ("coeff", "dhspg", dict(hat_lmbda_coeff=0.0), "hat_lmbda_coeff=0.0"),
      ("lmbda_bool", "dhspg", dict(lmbda=True), "lmbda=True"),
  )
  def test_bad_values(self, algorithm, change, match):
    if algorithm == "hspg":
      kwargs = dict(learning_rate=0.1, lmbda=1e-3, epsilon=0.0, start_step=0) | change
      call = lambda: hspg_lib.hspg(optax.sgd(0.1), TWO, **kwargs)
    else:
      kwargs = dict(target_group_sparsity=0.5, learning_rate=0.1, start_step=0) | change
      call = lambda: hspg_lib.dhspg(optax.sgd(0.1), TWO, **kwargs)
    with pytest.raises(ValueError, match=match):
      call()

  def test_bad_types(self):
    with pytest.raises(TypeError, match="not an optax optimizer"):
      hspg_lib.hspg(0.1, TWO, learning_rate=0.1, lmbda=0.0, epsilon=0.0, start_step=0)
    with pytest.raises(TypeError, match="Groups"):
      hspg_lib.dhspg(optax.sgd(0.1), [("cols", 2)], 0.5, learning_rate=0.1, start_step=0)

  def test_groups_that_do_not_fit_the_params(self):
    opt = hspg_lib.dhspg(optax.sgd(0.1), MLP, 0.5, learning_rate=0.1, start_step=0)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="not a leaf of the params"):
      opt.init(params)
    with pytest.raises(ValueError, match="not a leaf of the params"):
      opt.update(params, hspg_lib.DHSPGState(
          jnp.zeros((), jnp.int32), jnp.zeros(13, bool), jnp.zeros(13, bool),
          optax.sgd(0.1).init(params)), params)
    with pytest.raises(ValueError, match="needs the params"):
      opt.update(mlp_params(), opt.init(mlp_params()))

  def test_zero_groups_finds_the_state_in_a_chain(self):
    opt = optax.chain(optax.identity(),
                      hspg_lib.hspg(optax.sgd(0.5), TWO, learning_rate=0.5, lmbda=0.2,
                                    epsilon=0.0, start_step=0))
    params = two_params()
    _, state = opt.update(two_grads(), opt.init(params), params)
    np.testing.assert_array_equal(hspg_lib.zero_groups(state), [True, False])
    with pytest.raises(ValueError, match="found 0"):
      hspg_lib.zero_groups(optax.sgd(0.1).init(params))
