"""Learning-rate schedule and optimizer: global-norm clip, Adam, decoupled weight decay.

BERT's `AdamWeightDecayOptimizer` (used by the original BERT4Rec) per parameter:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2        (g already clipped by global norm)
    p -= lr * (m / (sqrt(v) + eps) + wd * p)               (wd only where the name allows it)

with no bias correction of m and v. `make_optimizer(bias_correction=True)` gives standard AdamW
(optax.adamw's update), `False` gives the original's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from bert4rec_jax import config as config_lib

# After the warm-up the rate decays linearly to 0 at the last step (BERT's), or stays at its peak
# (SASRec's reference code, and most PyTorch recommenders: Adam at a constant rate).
LR_DECAYS = ("linear", "none")
# BERT's exclude_from_weight_decay, matched (case-insensitively here) against the parameter's path.
NO_DECAY_PATTERNS = ("layernorm", "layer_norm", "bias")


def make_schedule(
    peak_lr: float, warmup_steps: int, total_steps: int, decay: str = "linear"
) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr`, then linear decay to 0 at `total_steps` (or, with
    decay="none", the peak rate from the warm-up's end on).

    `step` is the number of updates already applied (optax's count, the trainer's step before the
    update), so the first update uses schedule(0), which is 0 when warmup_steps > 0, as in BERT:

        lr(step) = peak_lr * clip(min(step / warmup_steps, (total - step) / (total - warmup)), 0, 1)

    The rate peaks at step == warmup_steps and stays 0 from total_steps on.

    Args:
      peak_lr: the largest learning rate.
      warmup_steps: steps of linear warm-up; 0 = start at the peak.
      total_steps: the step at which the rate reaches 0.
      decay: one of `LR_DECAYS`.

    Returns:
      A function of the step returning a float32 scalar.
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"lr_decay={decay!r}; expected one of {LR_DECAYS}")
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps ({warmup_steps}) <= num_train_steps ({total_steps}) and "
            f"num_train_steps > 0"
        )

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = step / warmup_steps if warmup_steps else jnp.float32(jnp.inf)
        falling = (total_steps - step) / max(total_steps - warmup_steps, 1)
        frac = jnp.minimum(warm, falling if decay == "linear" else jnp.float32(1.0))
        return jnp.float32(peak_lr) * jnp.clip(frac, 0.0, 1.0)

    return schedule


def _path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def weight_decay_mask(params: Any) -> Any:
    """True for parameters to decay: all but LayerNorm parameters and biases (BERT's rule).

    Decided by name, like BERT's `exclude_from_weight_decay`: a parameter whose path (e.g.
    "layers_0/attention_layer_norm/scale", "output_bias") contains "LayerNorm", "layer_norm" or
    "bias" in any case is not decayed. Kernels and both embedding tables are decayed.

    Args:
      params: a parameter pytree (the `params` collection, or the whole variables dict).

    Returns:
      A pytree of bools with the same structure.
    """

    def decay(path, _):
        name = _path_name(path).lower()
        return not any(p in name for p in NO_DECAY_PATTERNS)

    return jax.tree_util.tree_map_with_path(decay, params)


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    mu: optax.Updates  # first moment
    nu: optax.Updates  # second moment


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """BERT's Adam direction m / (sqrt(v) + eps), without bias correction of m and v.

    Args:
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to sqrt(v).

    Returns:
      A GradientTransformation whose updates still need the (negative) learning rate.
    """

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
        return ScaleByAdamNoBiasCorrectionState(mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, updates)
        updates = jax.tree.map(
            lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates
        )
        return updates, ScaleByAdamNoBiasCorrectionState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.01,
    clip_norm: float = 5.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """Clip by global norm, Adam, decoupled weight decay (masked), times -learning_rate.

    Args:
      learning_rate: a schedule (see `make_schedule`) or a constant.
      weight_decay: decoupled decay rate, multiplied by the learning rate as in BERT and AdamW;
        not applied to LayerNorm parameters and biases (`weight_decay_mask`). 0 = off.
      clip_norm: global gradient norm cap, applied before Adam; 0 = no clipping.
      b1, b2, eps: Adam's constants; eps is added to sqrt(v).
      bias_correction: False = BERT's original Adam without bias correction.

    Returns:
      The optax GradientTransformation; `update` needs `params` (for the weight decay).
    """
    parts = []
    if clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if bias_correction:
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    else:
        parts.append(scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def from_train_config(
    train: config_lib.TrainConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer and its schedule from the train section.

    Args:
      train: the train section (`config.RunConfig.train`): learning_rate, warmup_steps,
        num_train_steps, lr_decay, weight_decay, clip_norm, adam_bias_correction, adam_b1/b2/eps.

    Returns:
      (tx, schedule); log `schedule(step)` for the current learning rate.
    """
    schedule = make_schedule(
        train.learning_rate, train.warmup_steps, train.num_train_steps, train.lr_decay
    )
    tx = make_optimizer(
        schedule,
        weight_decay=train.weight_decay,
        clip_norm=train.clip_norm,
        b1=train.adam_b1,
        b2=train.adam_b2,
        eps=train.adam_eps,
        bias_correction=train.adam_bias_correction,
    )
    return tx, schedule
