"""TrainState with an EMA of the parameters, the data-parallel train step, and the loop.

The step is one `jax.jit` over a 1-D `data` mesh: the batch is sharded on its leading axis,
the state is replicated and donated, and the step's PRNG key is `fold_in(key, state.step)`,
so a run's randomness depends only on (key, step) — resumed runs are bit-exact.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxpure import faults, parallel
from jaxpure.errors import NonFiniteLossError

# loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics dict))
LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """Optimizer and EMA settings of one model (read from the config by the entry point)."""
  optimizer: str = "adam"  # a name of OPTIMIZERS: "adam" (NCSNv2) or "sgd" (cosine decay)
  lr: float = 1e-4
  beta1: float = 0.9
  beta2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.9
  weight_decay: float = 0.0
  grad_clip: float = 0.0  # max global gradient norm; 0 disables
  num_steps: int = 1  # length of the cosine schedule (sgd)
  ema_rate: float = 0.999
  ema_debias: bool = True


def _adam(s: OptimizerSettings) -> list:
  """Adam (AdamW with weight decay), NCSNv2's optimizer."""
  if s.weight_decay > 0:
    return [optax.adamw(s.lr, s.beta1, s.beta2, s.eps, weight_decay=s.weight_decay)]
  return [optax.adam(s.lr, s.beta1, s.beta2, s.eps)]


def _sgd(s: OptimizerSettings) -> list:
  """SGD with Nesterov momentum and a cosine-decayed learning rate (after weight decay)."""
  parts = [optax.add_decayed_weights(s.weight_decay)] if s.weight_decay > 0 else []
  schedule = optax.cosine_decay_schedule(s.lr, max(s.num_steps, 1))
  return parts + [optax.sgd(schedule, momentum=s.momentum, nesterov=True)]


#: The optimizers by name (config.<model>.optimizer): each gives its optax transformations.
OPTIMIZERS = {"adam": _adam, "sgd": _sgd}


def make_optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
  """The optax chain: [clip by global norm] -> the optimizer s.optimizer of OPTIMIZERS."""
  if s.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {s.optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
  parts = [optax.clip_by_global_norm(s.grad_clip)] if s.grad_clip > 0 else []
  return optax.chain(*parts, *OPTIMIZERS[s.optimizer](s))


def make_ema(s: OptimizerSettings) -> optax.GradientTransformation:
  """EMA of the parameters (optax.ema applied to the parameters themselves)."""
  return optax.ema(s.ema_rate, debias=s.ema_debias)


class TrainState(flax.struct.PyTreeNode):
  """step: int32 scalar; params; model_state (e.g. batch_stats, or {}); optimizer and EMA state.

  `ema_params` are the parameters used to purify/evaluate.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any
  ema_state: Any


def init_state(params, model_state, optimizer, ema) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params), ema_params=params,
                    ema_state=ema.init(params))


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn: LossFn, optimizer, ema, mesh):
  """Jitted `step(state, batch, key) -> (state, metrics)` over `mesh`, state donated.

  batch: pytree of arrays with the global batch on the leading axis; key: the run's key (the
  step folds in `state.step`). metrics: replicated scalars incl. `loss` and `finite`.
  """

  def step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_state = ema.update(params, state.ema_state)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads),
                   finite=jnp.isfinite(loss) & _all_finite(params))
    new_state = TrainState(step=state.step + 1, params=params, model_state=model_state,
                           opt_state=opt_state, ema_params=ema_params, ema_state=ema_state)
    return new_state, metrics

  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclasses.dataclass
class LoopResult:
  state: TrainState
  completed: bool  # False when should_stop() interrupted the loop (a checkpoint was saved)


def _stop_non_finite(model: str, step: int, loss: float, checkpointer, grad_clip: float):
  """Raises NonFiniteLossError for a non-finite loss or parameters at `step`, saying which
  checkpoint is kept and what to change (grad_clip: the run's clipping norm)."""
  checkpointer.wait()
  kept = checkpointer.latest_step()
  kept = (f"the last good checkpoint is kept at step {kept}" if kept is not None else
          "no checkpoint was saved yet (nothing non-finite is saved)")
  advice = (f"lower the learning rate (gradient clipping is already on: "
            f"config.{model}.grad_clip={grad_clip:g})" if grad_clip > 0 else
            f"lower the learning rate or enable gradient clipping "
            f"(--config.{model}.grad_clip=1.0)")
  raise NonFiniteLossError(
      f"[{model}] non-finite loss or parameters at step {step} (loss={loss}); "
      f"stopped; {kept}; {advice}")


def train_loop(*, model: str, state: TrainState, train_step, batches: Callable[[int], Any],
               key: jax.Array, num_steps: int, checkpointer, log_every: int,
               log_metrics: Callable[[dict], None], should_stop: Callable[[], bool] = lambda: False,
               print_fn: Callable[[str], None] = print, grad_clip: float = 0.0) -> LoopResult:
  """Runs `train_step` from `state.step` to `num_steps`, logging, checkpointing, stoppable.

  The first step compiles: a "compiling ..." line comes before it, its time reported apart.
  Every `log_every` steps (and at the end): a metrics dict (step, model, loss, steps_per_sec,
  ...) through `log_metrics`, a progress line with ETA through `print_fn` (steps/s and ETA
  count only steps after the first). Checkpoints follow the checkpointer's policy; a non-finite
  loss or parameters stops it before anything non-finite is saved (`_stop_non_finite`); when
  `should_stop()` turns true the state is saved and it returns with completed=False."""
  step = int(state.step)
  first_step = step + 1
  t_last, step_last = time.perf_counter(), step
  t_after_first = None  # when the first (compiling) step had finished
  while step < num_steps:
    if should_stop():
      if checkpointer.latest_step() != step:
        checkpointer.save(step, state, force=True)
      checkpointer.wait()
      print_fn(f"[{model}] interrupted at step {step}; checkpoint saved, "
               "run the same command again to resume")
      return LoopResult(state, completed=False)
    if step + 1 == first_step:
      print_fn(f"[{model}] compiling the train step (the first step includes it) ...")
      faults.reached("compile")
    state, metrics = train_step(state, batches(step), key)
    step += 1
    if step == first_step:
      jax.block_until_ready(metrics["loss"])
      t_after_first = time.perf_counter()
      print_fn(f"[{model}] compiled; step {step} took {t_after_first - t_last:.1f} s")
      if not step % log_every == 0 and step != num_steps:
        t_last, step_last = t_after_first, step  # later rates count post-compile steps only
    is_log = step % log_every == 0 or step == num_steps
    is_save = checkpointer.should_save(step) or step == num_steps
    if is_log or is_save:
      host = jax.device_get(metrics)
      if not bool(host["finite"]):
        _stop_non_finite(model, step, float(host["loss"]), checkpointer, grad_clip)
    if is_log:
      now = time.perf_counter()
      rate = (step - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, step
      # ETA from the steps after the compiling first one (unknown right after it).
      done = step - first_step
      overall = done / max(now - t_after_first, 1e-9) if done > 0 else 0.0
      eta = (num_steps - step) / overall if overall > 0 else float("inf")
      record = {"step": step, "model": model, "loss": float(host["loss"]),
                "steps_per_sec": rate,
                **{k: float(v) for k, v in host.items() if k not in ("loss", "finite")}}
      log_metrics(record)
      print_fn(f"[{model}] step {step}/{num_steps}  loss {record['loss']:.4f}  "
               f"{rate:.2f} steps/s  ETA {format_duration(eta)}")
    if is_save:
      checkpointer.save(step, state, force=step == num_steps)
    faults.reached("step")
  checkpointer.wait()
  return LoopResult(state, completed=True)
