"""One process of a multi-process test run (started by tests/test_multihost.py).

  python tests/multihost_worker.py MODE OUT WORKDIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

MODE "train": a few digits score-network steps through jobs.train.train_model (orbax
checkpoints in WORKDIR), then the final parameters to OUT (.npz, process 0).
MODE "purify": the purifier and one attack on a test batch, results to OUT (process 0).
MODE "train_long": trains for a long time (to be killed). XLA_FLAGS sets the device count.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from configs import digits  # noqa: E402
from jaxpure import attacks, data, model_specs, parallel, purifiers  # noqa: E402
from jaxpure.defense import Defense  # noqa: E402
from jaxpure.jobs import train  # noqa: E402
from jaxpure.purifiers import common as purifier_common  # noqa: E402


def tiny_config():
  config = digits.get_config()
  config.score.update(ngf=4, batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
  config.classifier.update(width=8, batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
  config.distributed.heartbeat_timeout_seconds = 10
  return config


def main():
  mode, out, workdir = sys.argv[1:4]
  config = tiny_config()
  if len(sys.argv) > 4:
    coordinator, num_processes, process_id = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    parallel.initialize_distributed(coordinator, num_processes, process_id,
                                    initialization_timeout=60, heartbeat_timeout_seconds=10)
  mesh = parallel.make_mesh()
  key = jax.random.key(0)
  if mode in ("train", "train_long"):
    if mode == "train_long":
      config.score.num_steps = 10**6
    split = data.open_split("digits", "train")
    state, _ = train.train_model(model_specs.SCORE, config, workdir, split, key, mesh,
                                 should_stop=lambda: False, print_fn=print)
    leaves = [np.asarray(x.addressable_shards[0].data) for x in jax.tree.leaves(state.params)]
    result = {f"p{i}": a for i, a in enumerate(leaves)}
  else:
    x, y = data.read_all(data.open_split("digits", "test"), 16)
    local = parallel.batch_sharding(mesh)
    sl = slice(jax.process_index() * 16 // jax.process_count(),
               (jax.process_index() + 1) * 16 // jax.process_count())
    gx = jax.make_array_from_process_local_data(local, x[sl], x.shape)
    gy = jax.make_array_from_process_local_data(local, y[sl], y.shape)
    gidx = jax.make_array_from_process_local_data(local, np.arange(16, dtype=np.int32)[sl], (16,))
    score, clf = model_specs.SCORE, model_specs.CLASSIFIER
    state = train.init_train_state(score, config, score.build(config), key, mesh)
    clf_state = train.init_train_state(clf, config, clf.build(config), key, mesh)
    adp = purifiers.get("adp")
    defense = Defense(score_fn=model_specs.score_fn(config),
                      logits_fn=model_specs.logits_fn(config), family=adp,
                      settings=adp.Settings(max_iter=3), restarts=2)
    params = {"score": {"params": state.params}, "classifier": {"params": clf_state.params}}
    keys = jax.jit(lambda i: purifier_common.example_keys(key, i),
                   out_shardings=local)(gidx)
    purified = defense.make_purifier(defense.restarts, mesh=mesh)(params, gx, keys)
    s = attacks.AttackSettings(eps=0.1, step_size=0.05, num_steps=2, n_eot=2)
    x_adv = attacks.make_attack("pgd_eot_full", defense, s, mesh=mesh)(params, keys, gx, gy)
    result = {"purified": multihost_utils.process_allgather(purified, tiled=True),
              "x_adv": multihost_utils.process_allgather(x_adv, tiled=True)}
  if jax.process_index() == 0:
    np.savez(out, **result)
  print("worker done", flush=True)


if __name__ == "__main__":
  main()
