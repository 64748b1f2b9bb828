"""Training: 8 devices equal 1, bit-exact resume, NaN handling, the debiased EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from jaxpure import data, model_specs, parallel, training
from jaxpure.errors import CheckpointMismatchError, NonFiniteLossError
from jaxpure.jobs import loading, train as train_job
from jaxpure.model_specs import SPECS


def tiny_config(**score):
  config = smoke.get_config()
  config.score.num_steps = 6
  config.classifier.num_steps = 6
  for k, v in score.items():
    config.score[k] = v
  return config


@pytest.fixture(scope="module")
def train_split():
  return data.open_split("digits", "train")


def _run_steps(kind, config, mesh, split, num_steps):
  spec = SPECS[kind]
  module = spec.build(config)
  key = jax.random.key(0)
  state = train_job.init_train_state(spec, config, module, key, mesh)
  settings = spec.optimizer_settings(config)
  step = training.make_train_step(spec.loss(config, module),
                                  training.make_optimizer(settings), training.make_ema(settings),
                                  mesh)
  batches = data.TrainBatches(split, jax.random.key(1), config[kind].batch_size, mesh,
                              random_flip=True)
  for i in range(num_steps):
    state, metrics = step(state, batches(i), key)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.reference
@pytest.mark.parametrize("kind,head", [
    # the score variants are slow (CI runs them); the classifier one exercises the same
    # data-parallel train step in the default suite
    pytest.param("score", "score", marks=pytest.mark.slow),
    pytest.param("score", "energy", marks=pytest.mark.slow), ("classifier", None)])
def test_eight_devices_match_one(kind, head, train_split):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  config = tiny_config(head=head or "score")
  one, m1 = _run_steps(kind, config, parallel.make_mesh(jax.devices()[:1]), train_split, 3)
  eight, m8 = _run_steps(kind, config, parallel.make_mesh(), train_split, 3)
  assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               one.params, eight.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               one.ema_params, eight.ema_params)
  # The steps did change the parameters (the comparison is not between two initialisations).
  fresh = train_job.init_train_state(SPECS[kind], config, SPECS[kind].build(config),
                                     jax.random.key(0), parallel.make_mesh())
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(one.params), jax.tree.leaves(jax.device_get(fresh.params))))
  assert moved > 1e-4


def test_train_step_shards_batch_and_replicates_state(train_split):
  config = tiny_config()
  mesh = parallel.make_mesh()
  batches = data.TrainBatches(train_split, jax.random.key(1), 16, mesh, random_flip=False)
  batch = batches(0)
  assert batch["image"].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 4)
  assert len(batch["image"].addressable_shards) == 8
  assert batch["image"].addressable_shards[0].data.shape == (2, 8, 8, 1)
  state = train_job.init_train_state(model_specs.SCORE, config, model_specs.SCORE.build(config),
                                      jax.random.key(0), mesh)
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated


def _interrupt_after(n):
  calls = {"n": 0}

  def should_stop():
    calls["n"] += 1
    return calls["n"] > n
  return should_stop


@pytest.mark.reference
@pytest.mark.parametrize("kind", [pytest.param("score", marks=pytest.mark.slow), "classifier"])
def test_resumed_run_is_bit_exact(kind, train_split, tmp_path):
  config = tiny_config()
  config[kind].checkpoint_every = 100  # the interruption alone must save what resume needs
  mesh = parallel.make_mesh()
  key = jax.random.key(5)
  quiet = lambda s: None
  full, done = train_job.train_model(SPECS[kind], config, str(tmp_path / "a"), train_split, key, mesh,
                                      should_stop=lambda: False, print_fn=quiet)
  assert done and int(full.step) == 6
  part, done = train_job.train_model(SPECS[kind], config, str(tmp_path / "b"), train_split, key, mesh,
                                      should_stop=_interrupt_after(3), print_fn=quiet)
  assert not done and int(part.step) == 3
  resumed, done = train_job.train_model(SPECS[kind], config, str(tmp_path / "b"), train_split, key,
                                         mesh, should_stop=lambda: False, print_fn=quiet)
  assert done and int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  # ...and the interrupted state really differed from the final one.
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(jax.device_get(part.params)), jax.tree.leaves(jax.device_get(full.params))))


def test_a_rerun_after_a_kill_logs_each_step_once(train_split, tmp_path):
  """A run killed after logging steps past its last checkpoint (as kill -9 leaves it: no save
  on the way out, maybe half a line) and run again logs each step once, with the values of an
  uninterrupted run."""
  import json
  import shutil
  config = tiny_config()
  config.classifier.update(log_every=1, checkpoint_every=2, keep_checkpoints=3)
  mesh, key, quiet = parallel.make_mesh(), jax.random.key(5), lambda s: None
  workdir = tmp_path / "w"
  _, done = train_job.train_model(SPECS["classifier"], config, str(workdir), train_split, key,
                                  mesh, should_stop=lambda: False, print_fn=quiet)
  assert done
  log = workdir / "metrics.jsonl"
  full = [json.loads(l) for l in log.read_text().splitlines()]
  assert [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
  # As if killed while writing step 6's line, after checkpoint 4: checkpoint 6 never written.
  shutil.rmtree(workdir / "checkpoints" / "classifier" / "6")
  other = {"step": 3, "model": "score", "loss": 1.0, "steps_per_sec": 1.0}  # another model's
  lines = log.read_text().splitlines()
  log.write_text("\n".join(lines[:5] + [json.dumps(other), lines[5][:20]]))
  resumed, done = train_job.train_model(SPECS["classifier"], config, str(workdir), train_split,
                                        key, mesh, should_stop=lambda: False, print_fn=quiet)
  assert done and int(resumed.step) == 6
  again = [json.loads(l) for l in log.read_text().splitlines()]
  mine = [r for r in again if r["model"] == "classifier"]
  assert [r["step"] for r in mine] == [1, 2, 3, 4, 5, 6]
  assert other in again
  strip = lambda r: {k: v for k, v in r.items() if k != "steps_per_sec"}  # noqa: E731
  assert [strip(r) for r in mine] == [strip(r) for r in full]  # steps 5, 6 replayed exactly


def test_nan_loss_stops_and_keeps_last_good_checkpoint(train_split, tmp_path):
  config = tiny_config(num_steps=2)
  mesh = parallel.make_mesh()
  key, quiet = jax.random.key(0), (lambda s: None)
  good, _ = train_job.train_model(model_specs.SCORE, config, str(tmp_path), train_split, key, mesh,
                                   should_stop=lambda: False, print_fn=quiet)
  config.score.num_steps = 6
  config.score.lr = float("inf")
  with pytest.raises(NonFiniteLossError, match="non-finite"):
    train_job.train_model(model_specs.SCORE, config, str(tmp_path), train_split, key, mesh,
                           should_stop=lambda: False, print_fn=quiet)
  ckpt = train_job.checkpointer(model_specs.SCORE, config, str(tmp_path))
  assert ckpt.all_steps() == [2]
  restored = ckpt.restore(train_job.init_train_state(
      model_specs.SCORE, config, model_specs.SCORE.build(config), jax.random.key(1), mesh))
  for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)),
                  jax.tree.leaves(jax.device_get(good.params))):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_model_is_refused(train_split, tmp_path):
  config = tiny_config(num_steps=2)
  mesh = parallel.make_mesh()
  train_job.train_model(model_specs.SCORE, config, str(tmp_path), train_split, jax.random.key(0), mesh,
                         should_stop=lambda: False, print_fn=lambda s: None)
  other = tiny_config(num_steps=2, ngf=8)
  with pytest.raises(CheckpointMismatchError, match="ngf"):
    loading.load_model(model_specs.SCORE, other, str(tmp_path), mesh)
  energy = tiny_config(num_steps=2, head="energy")
  with pytest.raises(CheckpointMismatchError, match="head"):
    loading.load_model(model_specs.SCORE, energy, str(tmp_path), mesh)


def test_ema_is_debiased_average_of_parameters():
  """After n steps the debiased EMA equals sum_i (1-r) r^(n-i) p_i / (1 - r^n)."""
  settings = training.OptimizerSettings(lr=0.1, ema_rate=0.9)
  opt, ema = training.make_optimizer(settings), training.make_ema(settings)
  loss_fn = lambda p, s, b, k: (jnp.sum((p["w"] - b["t"]) ** 2), (s, {}))
  mesh = parallel.make_mesh(jax.devices()[:1])
  step = training.make_train_step(loss_fn, opt, ema, mesh)
  state = training.init_state({"w": jnp.zeros(3)}, {}, opt, ema)
  history = []
  for i in range(5):
    state, _ = step(state, {"t": jnp.full((1, 3), float(i + 1))}, jax.random.key(0))
    history.append(np.asarray(state.params["w"], np.float64))
  r, n = 0.9, len(history)
  want = sum((1 - r) * r ** (n - 1 - i) * p for i, p in enumerate(history)) / (1 - r ** n)
  np.testing.assert_allclose(np.asarray(state.ema_params["w"]), want, rtol=1e-5)
  assert not np.allclose(want, history[-1])  # the EMA is not just the last parameters
