"""The functions an artifact serves, in jnp: whole histories -> top-k dense ids and scores
(`serving_fn`), or -> user vectors (`user_vectors_fn`); and their two serialisations, jax.export
(`export_serving_fn`, `export_encode_fn`) and a TF SavedModel (`write_saved_model`).

Signatures are in docs/serving.md; `writer.py` writes them into an artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bert4rec_jax import models, scoring
from bert4rec_jax.export import artifact

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
# Input and output names, in the jax.export function's argument order and in the SavedModel.
HISTORY = "history"
USERS = "users"
EXCLUDE_SEEN = "exclude_seen"
ITEM_IDS = "item_ids"
SCORES = "scores"
USER_VECTORS = "user_vectors"
SIGNATURE = "serving_default"
ENCODE_SIGNATURE = "encode"

ServeFn = Callable[..., Any]


def serving_model(model: models.Model) -> models.Model:
    """The model as exported: XLA attention, which lowers on every platform.

    A run may have trained with cuDNN attention (GPU only); every implementation computes the same
    function, so the export uses the portable one.
    """
    return models.with_config(model, dataclasses.replace(model.config, attention_impl=None))


def user_vectors_fn(model: models.Model) -> ServeFn:
    """encode(params, history [b, s], users [b]) -> float32 [b, hidden + 1]: [h, 1].

    With item vectors [E[i], bias[i]], u . item = h . E[i] + bias[i], the model's score.
    """
    # Only the [MASK] row is read, so the last block runs for that row alone.
    fns = scoring.scoring_fns(model, last_block_at_mask=True)
    inputs = scoring.model_inputs(model)
    uses_users = bool(model.config.user_features)

    def encode(params, history, users):
        ids, mask_pos = inputs(history)
        # Item features need nothing here: their tables are constants of the exported program;
        # so are the user feature rows, indexed by `users` (row 0: the unknown user).
        h = fns.encode(params, ids, mask_pos, users if uses_users else None)  # [b, H]
        h = h.astype(jnp.float32)
        return jnp.concatenate([h, jnp.ones((h.shape[0], 1), jnp.float32)], axis=1)

    return encode


def scores_fn(model: models.Model) -> ServeFn:
    """The scores of every item for a batch of whole histories.

    Args:
      model: the model (its `scoring.scoring_fns` do the work, as in evaluation).

    Returns:
      scores(params, history int32 [b, s], users int32 [b], exclude_seen bool [b])
      -> float32 [b, num_items], column j scoring dense item j + 1; -inf where exclude_seen and
      the item is anywhere in the history.
    """
    fns = scoring.scoring_fns(model)
    encode = user_vectors_fn(model)
    num_items = model.config.vocab_size - 2

    def scores(params, history, users, exclude_seen):
        b = history.shape[0]
        u = encode(params, history, users)  # [b, H + 1]
        items = jnp.arange(1, num_items + 1, dtype=jnp.int32)  # [V]: padding, [MASK] never scored
        out = fns.score(params, u[:, :-1], items).astype(jnp.float32)  # [b, V]
        known = (history >= 1) & (history <= num_items)
        history = jnp.where(known, history, models.PAD_ID)
        rows = jnp.arange(b)[:, None]  # [b, 1]
        seen = jnp.zeros((b, num_items + 1), bool).at[rows, history].set(True)[:, 1:]  # [b, V]
        return jnp.where(seen & exclude_seen[:, None], -jnp.inf, out)

    return scores


def serving_fn(model: models.Model, top_k: int) -> ServeFn:
    """The exported function: (params, history, users, exclude_seen) -> (item_ids, scores).

    Args:
      model: the model.
      top_k: items returned per row, best first (ties: the lower dense id first).

    Returns:
      serve(params, history, users, exclude_seen) -> (int32 [b, top_k] dense ids,
      float32 [b, top_k]).
    """
    scores = scores_fn(model)

    def serve(params, history, users, exclude_seen):
        top_scores, top_index = jax.lax.top_k(scores(params, history, users, exclude_seen), top_k)
        return (top_index + 1).astype(jnp.int32), top_scores  # column j is dense id j + 1

    return serve


def input_specs(params: Any) -> tuple[Any, jax.ShapeDtypeStruct, ...]:
    """Abstract (params, history [b, s], users [b], exclude_seen [b]); b and s are symbolic.

    The history is the user's WHOLE history, of symbolic length: one array carries everything
    the model needs, so a client cannot pass a window and a seen list that disagree, nor needs
    max_len to cut the window. The parameters are the first input, not constants baked in: the
    serialised module stays small (~50 KB) whatever the catalogue, a large item table never
    meets the 2 GB protobuf limit of a TF graph (where jax2tf would embed constants), XLA does
    not constant-fold megabytes of weights at load, and the SavedModel holds them as
    tf.Variables, as TF Serving expects; the manifest's checksums keep function and parameters
    together.
    """
    b, s = jax.export.symbolic_shape("b, s")
    return (
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params),
        jax.ShapeDtypeStruct((b, s), jnp.int32),
        jax.ShapeDtypeStruct((b,), jnp.int32),
        jax.ShapeDtypeStruct((b,), jnp.bool_),
    )


def export_serving_fn(
    model: models.Model, params: Any, top_k: int, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
    """`serving_fn` exported with jax.export for a symbolic batch size and history length.

    Args:
      model: the model.
      params: its parameters (or abstract ones: only shapes and dtypes are read).
      top_k: items returned per row.
      platforms: what to lower for; the artifact runs on any of them.

    Returns:
      The Exported function; `.serialize()` gives the bytes of serving.jax.
    """
    specs = input_specs(params)
    return jax.export.export(jax.jit(serving_fn(model, top_k)), platforms=tuple(platforms))(*specs)


def export_encode_fn(
    model: models.Model, params: Any, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
    """`user_vectors_fn` exported like `export_serving_fn`: the bytes of encode.jax."""
    specs = input_specs(params)[:3]
    return jax.export.export(jax.jit(user_vectors_fn(model)), platforms=tuple(platforms))(*specs)


def write_saved_model(
    model: models.Model,
    params: Any,
    top_k: int,
    directory: pathlib.Path,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> None:
    """Writes both functions as a TensorFlow SavedModel (TF is imported here only).

    Signatures (shapes in the module docstring; b and s are None):
      `serving_default`: history, users, exclude_seen -> {item_ids, scores};
      `encode`: history, users -> {user_vectors}.
    The parameters are tf.Variables.

    The model and the exclusion run in jax2tf's XlaCallModule; the top-k runs as TF's own TopKV2:
    jax lowers `lax.top_k` to a StableHLO composite that TensorFlow releases built against an
    older StableHLO cannot read (TF 2.21 with jax 0.10), while a sort in its place costs 20x the
    time on CPU. Both keep the lower index first on ties, so both artifacts agree.

    Args:
      model: the model.
      params: its parameters.
      top_k: items returned per row.
      directory: the SavedModel directory to write.
      platforms: what the XlaCallModule is lowered for.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    scores = scores_fn(model)
    encode = user_vectors_fn(model)

    def scores_of_flat(flat, history, users, exclude_seen):
        return scores(artifact.unflatten_params(flat), history, users, exclude_seen)

    def encode_of_flat(flat, history, users):
        return encode(artifact.unflatten_params(flat), history, users)

    # native_serialization is the only mode left (the flag is deprecated since jax 0.4.31).
    convert = functools.partial(
        jax2tf.convert, with_gradient=False, native_serialization_platforms=tuple(platforms)
    )
    scores_tf = convert(scores_of_flat, polymorphic_shapes=[None, "(b, s)", "(b,)", "(b,)"])
    encode_tf = convert(encode_of_flat, polymorphic_shapes=[None, "(b, s)", "(b,)"])
    history_spec = tf.TensorSpec([None, None], tf.int32, name=HISTORY)
    users_spec = tf.TensorSpec([None], tf.int32, name=USERS)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="bert4rec")
            self.params = {
                name: tf.Variable(value, trainable=False, name=name.replace("/", "."))
                for name, value in artifact.flatten_params(params).items()
            }

        @tf.function(
            input_signature=[
                history_spec,
                users_spec,
                tf.TensorSpec([None], tf.bool, name=EXCLUDE_SEEN),
            ],
            autograph=False,
        )
        def serve(self, history, users, exclude_seen):
            all_scores = scores_tf(self.params, history, users, exclude_seen)  # [b, V]
            top_scores, top_index = tf.math.top_k(all_scores, k=top_k)  # [b, k]
            return {ITEM_IDS: top_index + 1, SCORES: top_scores}

        @tf.function(input_signature=[history_spec, users_spec], autograph=False)
        def encode(self, history, users):
            return {USER_VECTORS: encode_tf(self.params, history, users)}

    module = Serving()
    tf.saved_model.save(
        module,
        str(directory),
        signatures={SIGNATURE: module.serve, ENCODE_SIGNATURE: module.encode},
    )
