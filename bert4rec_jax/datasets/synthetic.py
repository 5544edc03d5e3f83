"""A synthetic data set with a learnable sequential structure, generated in the package.

The catalogue is a ring of `num_items` items. Every user has a latent taste: a starting item and a
velocity, a step of +-1..3 items along the ring. From one interaction to the next the user moves
by its velocity, sometimes one item further or shorter (jitter), and now and then jumps to an
item drawn uniformly (noise). The next item is therefore a near neighbour of the current one in a
direction the user's history reveals: a sequence model that reads the last few items predicts it
well, while item popularity is nearly flat and predicts it poorly.

Everything is vectorised numpy over a [num_users, max_length] grid and depends only on
(num_users, num_items, seed), so the same seed gives the same data set on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from bert4rec_jax.datasets import builders, readers

# The size of configs/default.py's synthetic set.
DEFAULT_NUM_USERS = 2000
DEFAULT_NUM_ITEMS = 500
DEFAULT_SEED = 0
MIN_LENGTH = 5
MAX_LENGTH = 50
# Chance, per step, of a jump to a uniformly drawn item (the noise a model cannot predict).
JUMP_PROB = 0.05
# Chance, per step, of moving one item more or less than the user's velocity.
JITTER_PROB = 0.2
MAX_VELOCITY = 3


def generate_sequences(num_users: int, num_items: int, seed: int) -> readers.Sequences:
    """Generates the synthetic users' sequences.

    Args:
      num_users: users to generate; raw user ids are 1..num_users.
      num_items: size of the catalogue; raw item ids are 1..num_items.
      seed: the generator's seed.

    Returns:
      The sequences; lengths are uniform in [MIN_LENGTH, MAX_LENGTH].

    Raises:
      ValueError: on a catalogue too small for the structure or no users.
    """
    if num_users < 1:
        raise ValueError(f"synthetic.num_users must be >= 1, got {num_users}")
    if num_items < 4 * MAX_VELOCITY:
        raise ValueError(f"synthetic.num_items must be >= {4 * MAX_VELOCITY}, got {num_items}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_LENGTH, MAX_LENGTH + 1, size=num_users)  # [users]
    speed = rng.integers(1, MAX_VELOCITY + 1, size=num_users)
    velocity = np.where(rng.random(num_users) < 0.5, -speed, speed)  # [users]
    start = rng.integers(0, num_items, size=num_users)  # [users]

    shape = (num_users, MAX_LENGTH - 1)
    jitter = rng.choice(
        np.array([-1, 0, 1]), size=shape, p=[JITTER_PROB / 2, 1 - JITTER_PROB, JITTER_PROB / 2]
    )
    # A jump adds a uniform offset, which makes the landing item uniform whatever came before.
    jump = np.where(rng.random(shape) < JUMP_PROB, rng.integers(0, num_items, size=shape), 0)
    steps = velocity[:, None] + jitter + jump  # [users, max_length - 1]
    position = np.empty((num_users, MAX_LENGTH), dtype=np.int64)  # [users, max_length]
    position[:, 0] = start
    np.cumsum(steps, axis=1, out=position[:, 1:])
    position[:, 1:] += start[:, None]
    position %= num_items

    keep = np.arange(MAX_LENGTH)[None, :] < lengths[:, None]  # [users, max_length]
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return readers.Sequences(
        raw_user_ids=np.arange(1, num_users + 1, dtype=np.int64),
        offsets=offsets,
        raw_items=position[keep] + 1,  # row-major, so each user's items stay in order
    )


def config_name(num_users: int, num_items: int, seed: int) -> str:
    """The TFDS config name of a synthetic set, e.g. "u2000_i500_s0"."""
    return f"u{num_users}_i{num_items}_s{seed}"


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """A synthetic data set's size and seed."""

    num_users: int = DEFAULT_NUM_USERS
    num_items: int = DEFAULT_NUM_ITEMS
    seed: int = DEFAULT_SEED


def synthetic_config(num_users: int, num_items: int, seed: int) -> SyntheticConfig:
    """The builder config for these parameters (the default one when they match it)."""
    name = config_name(num_users, num_items, seed)
    for config in SyntheticSequences.BUILDER_CONFIGS:
        if config.name == name:
            return config
    return SyntheticConfig(
        name=name,
        description=f"{num_users} users, {num_items} items, seed {seed}.",
        num_users=num_users,
        num_items=num_items,
        seed=seed,
    )


class SyntheticSequences(tfds.core.GeneratorBasedBuilder):
    """Synthetic users walking a ring of items (see the module docstring); no download.

    Configs are named `u<users>_i<items>_s<seed>`; any size is built by passing
    `config=synthetic_config(num_users, num_items, seed)`.

    Examples: one per user, `{"user_id": int64, "items": Tensor(shape=(None,), int64)}`, items
    oldest first.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticConfig(
            name=config_name(DEFAULT_NUM_USERS, DEFAULT_NUM_ITEMS, DEFAULT_SEED),
            description=(
                f"Default: {DEFAULT_NUM_USERS} users, {DEFAULT_NUM_ITEMS} items, "
                f"seed {DEFAULT_SEED}."
            ),
            num_users=DEFAULT_NUM_USERS,
            num_items=DEFAULT_NUM_ITEMS,
            seed=DEFAULT_SEED,
        )
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return builders.sequence_info(self, __doc__)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        config = self.builder_config
        sequences = generate_sequences(config.num_users, config.num_items, config.seed)
        return {"train": builders.examples_from_sequences(sequences)}

    def _generate_examples(self, **kwargs):  # pragma: no cover - replaced in _split_generators
        raise NotImplementedError
