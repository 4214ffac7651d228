"""Pruning on params sharded over 8 simulated CPU devices (run in a subprocess).

Global magnitude pruning, the layerwise (ERK) allocation, the heavy-tie branch of the selection
and HESSO's ranking of groups must never gather the model onto one device: the compiled HLO may
only all-gather arrays of a few hundred entries (the selection's sample, one score per group),
never one the size of a layer.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from sparsejax import masks, pruning, schedules, selection, transforms
    from sparsejax.structured import groups as groups_lib, hesso
    assert jax.device_count() == 8

    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"a": jax.random.normal(keys[0], (1024, 512)),
              "b": jax.random.normal(keys[1], (512, 256)),
              "c": jax.random.normal(keys[2], (256, 16))}
    SMALLEST = 256 * 16  # entries of the smallest layer: no all-gather may come near it
    LIMIT = 1024

    def gathered(fn, *args):
      hlo = jax.jit(fn).lower(*args).compile().as_text()
      sizes = []
      for line in hlo.splitlines():
        m = re.search(r"= \\(?(\\w+\\[[\\d,]*\\][^ ]*) all-gather\\(", line)
        if m:
          for dims in re.findall(r"\\w+\\[([\\d,]*)\\]", m.group(1)):
            sizes.append(int(np.prod([int(d) for d in dims.split(",") if d])))
      return sizes

    for spec in (P("model", None), P(None, "model")):  # rows, or output units (a model axis)
      shard = NamedSharding(mesh, spec)
      specs = {"a": shard, "b": shard, "c": NamedSharding(mesh, P())}
      sharded = jax.device_put(params, specs)
      ones = jax.device_put(masks.ones_like(params), specs)
      for name, fn in [
          ("global", lambda p, m: pruning.magnitude(p, 0.9, m, "global")),
          ("erk", lambda p, m: pruning.magnitude(p, 0.9, m, "erk")),
          # Every magnitude one of a few values: ties straddle the budget, the bisection runs.
          ("ties", lambda p, m: pruning.magnitude(jax.tree.map(jnp.round, p), 0.5, m,
                                                  "global")),
      ]:
        out = jax.jit(fn)(sharded, ones)
        ref = fn(params, masks.ones_like(params))
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
          np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert out["a"].sharding.spec == spec, (name, out["a"].sharding)
        sizes = gathered(fn, sharded, ones)
        assert max(sizes, default=0) <= LIMIT < SMALLEST, (name, spec, sizes)

    # The tie branch keeps exactly k, lowest flat index first (leaves in order).
    ties = [jnp.zeros((64, 32), jnp.uint32) + 7, jnp.zeros((32, 16), jnp.uint32) + 7]
    kept = jax.jit(selection.top_k_masks)(
        [jax.device_put(t, NamedSharding(mesh, P(None, "model"))) for t in ties], 2100)
    flat = np.concatenate([np.asarray(k).ravel() for k in kept])
    assert flat[:2100].all() and not flat[2100:].any()

    # Gradual magnitude pruning on sharded params: masks follow the params' sharding.
    shard = NamedSharding(mesh, P(None, "model"))
    sharded = jax.device_put(params, {"a": shard, "b": shard, "c": shard})
    opt = transforms.magnitude_pruning(optax.sgd(0.1), schedules.polynomial(0.8, 0, 4, 2),
                                       "global")
    state = opt.init(sharded)
    step = jax.jit(lambda p, s: opt.update(jax.tree.map(lambda x: x * 0.01, p), s, p))
    for _ in range(5):
      updates, state = step(sharded, state)
      sharded = optax.apply_updates(sharded, updates)
    got = transforms.get_masks(state)
    assert got["a"].sharding.spec == P(None, "model"), got["a"].sharding
    kept, total = masks.count(got)
    assert int(kept) == round(0.2 * total), (int(kept), total)
    assert max(gathered(step, sharded, state), default=0) <= LIMIT

    # HESSO: groups are the output units of a and b (sharded over the model axis); its
    # saliency and ranking reduce each group locally and gather one score per group.
    groups = groups_lib.declare([
        ("a", 512, [("['a']", 1)], [("['b']", 0)]),
        ("b", 256, [("['b']", 1)], [("['c']", 0)]),
    ])
    opt = hesso.hesso(optax.sgd(0.01), groups, 0.5, warmup_steps=1, pruning_periods=2,
                      pruning_steps=4)
    state = opt.init(sharded)
    # An elementwise loss: a model-parallel forward pass would gather activations, not weights.
    loss = lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p))
    def hstep(p, s):
      value, grads = jax.value_and_grad(loss)(p)
      updates, s = opt.update(grads, s, p, value=value)
      return optax.apply_updates(p, updates), s
    hjit = jax.jit(hstep)
    for _ in range(6):
      sharded, state = hjit(sharded, state)
    assert int(hesso.pruned_groups(state).sum()) == (512 + 256) // 2
    assert sharded["a"].sharding.spec == P(None, "model"), sharded["a"].sharding
    sizes = gathered(hstep, sharded, state)
    assert max(sizes, default=0) <= 512 + 256, sizes
    print("ok")
""")


def test_pruning_never_gathers_sharded_params():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")
