"""The run's config parsed and checked once: `RunConfig.from_config_dict(config)`, typed sections.

Every command reads an `ml_collections.ConfigDict` (a config file, or the `config.json` a run left
in its workdir) through this one function. It is also the one place that fills in a field an older
config.json lacks, with the value those runs had. Each module then takes its own section.

The sections a module owns stay in it: `models.ModelConfig`, `cloze.InputConfig`,
`losses.LossConfig`, `evaluation.EvalConfig`. Each checks its own fields against its module's
constants (MODEL_KINDS, LOSS_TYPES, PROTOCOLS), and none imports this module, so imports run one
way: those modules, then this one, then what reads a whole run (experiment, checkpointing's
SHAPE_FIELDS, train_lib, evaluate, export). The sections no module owns (data, train, mesh) are
defined here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from bert4rec_jax import cloze, losses, models, sharding
from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets.corpus import ALL_SPLIT_MODES
from bert4rec_jax.datasets.prepared import DATASETS
from bert4rec_jax.evaluation import EvalConfig

# Model fields that change neither the parameters' shapes nor what they mean, each with why: a
# resumed run may change these. Every other field of `models.ModelConfig` is a shape field, so a
# new parameter switch is compared on resume without anyone having to list it here.
NOT_SHAPE_MODEL_FIELDS = {
    "vocab_size": "not a config field: fixed by the data set's fields, compared below",
    "hidden_dropout": "a training-time rate; no parameter depends on it",
    "attention_dropout": "a training-time rate; no parameter depends on it",
    "layer_norm_eps": "a numerical constant of LayerNorm; its parameters keep their shapes",
    "init_std": "only draws the initial parameters, which a resumed run restores",
    "dtype": "the compute dtype; parameters are always float32",
    "attention_impl": "another kernel for the same attention",
    "last_block": "which rows of the last block are computed; the same function",
}
# Fields that fix the parameters' shapes or meaning: a workdir's checkpoints only resume a config
# that agrees on all of them (`RunConfig.shape_fields`). The data set's own group of fields
# (`synthetic.*` or `file.*`, see DATASET_GROUPS) counts too: with "dataset" it fixes the item
# vocabulary.
MODEL_SHAPE_FIELDS = tuple(
    f.name for f in dataclasses.fields(models.ModelConfig) if f.name not in NOT_SHAPE_MODEL_FIELDS
)
SHAPE_FIELDS = ("dataset",) + tuple(f"model.{name}" for name in MODEL_SHAPE_FIELDS)
# The data sets whose vocabulary depends on a group of fields of their own (named alike).
DATASET_GROUPS = ("synthetic", "file")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, where it is, and how it is split (the config's top-level data fields).

    Attributes:
      dataset: one of `prepared.DATASETS`.
      split_mode: one of `corpus.ALL_SPLIT_MODES`.
      data_dir: where prepared data sets are cached ("" = TFDS's default).
      manual_dir: an offline copy of the source files ("" = download).
      synthetic: `synthetic.*` (dataset=synthetic: size and seed).
      file: `file.*` (dataset=file); None for a config older than the group.
      valid_start, test_start: `temporal.*`, the temporal split's two cut-offs (a date such
        as "2026-01-31" or a quantile of all interactions' times such as "q0.8";
        `corpus.parse_cutoff`); read only when split_mode="temporal".
    """

    dataset: str
    split_mode: str
    data_dir: str
    manual_dir: str
    synthetic: Mapping[str, Any]
    file: Mapping[str, Any] | None
    valid_start: str = "q0.8"
    test_start: str = "q0.9"

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(
                f"dataset={self.dataset!r}: unknown data set; choose one of {DATASETS}"
            )
        if self.split_mode not in ALL_SPLIT_MODES:
            raise ValueError(f"split_mode={self.split_mode!r}: must be one of {ALL_SPLIT_MODES}")
        if self.split_mode == "temporal":
            timed = self.dataset.endswith("-raw") or (
                self.dataset == "file" and bool((self.file or {}).get("timestamp_column"))
            )
            if not timed:
                raise ValueError(
                    f"split_mode='temporal' needs timestamps, and dataset={self.dataset!r} has "
                    "none; use ml-100k-raw (ml-1m-raw, ml-20m-raw) or file with "
                    "file.timestamp_column"
                )
            # The form of each cut-off now, before any data is read; the data's own checks
            # (periods that hold users) come with the split.
            for field in ("valid_start", "test_start"):
                corpus_lib.parse_cutoff(getattr(self, field), np.zeros(1), f"temporal.{field}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop: its length, the optimizer, and when to log, validate and save.

    The top-level fields of the config keep their names; the four validation fields come from
    `eval.*` (`eval_every_steps` is `eval.every_steps`), where users set them.

    Attributes:
      seed: parameters, dropout and data order derive from it.
      batch_size: the global batch.
      num_train_steps, learning_rate, warmup_steps, lr_decay: the schedule
        (`optimizer.make_schedule`).
      weight_decay, clip_norm, adam_bias_correction, adam_b1, adam_b2, adam_eps: the optimizer.
      log_every_steps, checkpoint_every_steps, keep_checkpoints: logging and checkpoints.
      eval_every_steps: validate every this many steps (and at the last); 0 = never.
      num_valid_users: users sampled for each validation; 0 = all.
      metric: "<protocol>/<metric>" that selects the best checkpoint, e.g. "pop100/ndcg@10".
      early_stopping_patience: validations without gain before training stops; 0 = never.
    """

    seed: int
    batch_size: int
    num_train_steps: int
    learning_rate: float
    warmup_steps: int
    lr_decay: str
    weight_decay: float
    clip_norm: float
    adam_bias_correction: bool
    adam_b1: float
    adam_b2: float
    adam_eps: float
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    eval_every_steps: int
    num_valid_users: int
    metric: str
    early_stopping_patience: int

    def __post_init__(self):
        if self.num_train_steps <= 0:
            raise ValueError(f"num_train_steps={self.num_train_steps!r}: must be positive")
        if not 0 <= self.warmup_steps < self.num_train_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: must be in [0, num_train_steps)")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate!r}: must be positive")
        # Named by the ConfigDict keys users set (eval.*), not by this section's attributes.
        for name, value in (
            ("eval.every_steps", self.eval_every_steps),
            ("eval.num_valid_users", self.num_valid_users),
            ("eval.early_stopping_patience", self.early_stopping_patience),
        ):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh (`sharding.make_mesh`): devices on the data axis (0 = all / model) and on
    the model axis (the item table's rows are split over them)."""

    data: int = 0
    model: int = 1

    def make_mesh(self) -> jax.sharding.Mesh:
        """`sharding.make_mesh` of this shape over all devices; fails naming mesh.data or
        mesh.model when the shape does not fit them."""
        return sharding.make_mesh(data=self.data, model=self.model)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole config, parsed and checked: one typed section per part of the program.

    `model.vocab_size` is None here: it is known only once the data set is loaded, and
    `models.build_model` sets it. `source` is the ConfigDict it was parsed from, kept only as the
    run's record (the workdir's config.json and the hash its results are stamped with): past
    the command line, modules read the sections, never `source`.
    """

    data: DataConfig
    model: models.ModelConfig
    input: cloze.InputConfig
    loss: losses.LossConfig
    eval: EvalConfig
    train: TrainConfig
    mesh: MeshConfig
    source: ml_collections.ConfigDict | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @classmethod
    def from_config_dict(cls, config: ml_collections.ConfigDict) -> RunConfig:
        """Parses a ConfigDict (see configs/default.py) into its sections, each checking its own
        fields.

        A config.json written before a field existed gets the value those runs had; these
        fallbacks are written here and nowhere else.

        Raises:
          ValueError: naming the first bad field.
        """
        data = _data(config)
        model = _model(config.model)
        inp = _input(config, model)
        return cls(
            data=data,
            model=model,
            input=inp,
            loss=_loss(config),
            eval=_eval(config.eval, model, inp),
            train=_train(config),
            mesh=_mesh(config),
            source=config,
        )

    @property
    def validates(self) -> bool:
        """Whether training validates: the standard and temporal splits keep validation apart."""
        return self.train.eval_every_steps > 0 and self.data.split_mode in ("standard", "temporal")

    def shape_fields(self, dataset: str | None = None) -> dict[str, Any]:
        """{dotted name: value} of `SHAPE_FIELDS`, and the leaves of `dataset`'s group of fields
        (`DATASET_GROUPS`; default: this run's data set's) when it has one."""
        fields = {"dataset": self.data.dataset}
        fields.update({f"model.{name}": getattr(self.model, name) for name in MODEL_SHAPE_FIELDS})
        dataset = self.data.dataset if dataset is None else dataset
        if dataset in DATASET_GROUPS:  # a group absent from an older config.json is one None
            fields.update(sorted(_leaves(dataset, getattr(self.data, dataset)).items()))
        return fields

    def check(self, mesh: jax.sharding.Mesh) -> None:
        """The rules across sections that training adds: the batches against the mesh, and the
        validation metric against the evaluation's protocols and cut-offs. (Evaluation alone
        does not need them: it fits its batch to its own devices and takes any protocol.)

        Raises:
          ValueError: naming the first bad field.
        """
        # Every process holds as many devices, so a multiple of the devices splits over processes.
        sharding.check_batch_size("batch_size", self.train.batch_size, mesh)
        sharding.check_batch_size("eval.batch_size", self.eval.batch_size, mesh)
        if self.validates and self.train.metric not in self.eval.metric_names():
            raise ValueError(
                f"eval.metric={self.train.metric!r}: must be '<protocol>/<metric>' with a "
                f"protocol in eval.protocols={self.eval.protocols} and a cut-off in "
                f"eval.ks={self.eval.ks}"
            )


def _leaves(name: str, value: Any) -> dict[str, Any]:
    """{dotted name: value} of a field, a group of fields (dict) flattened to its leaves."""
    if not isinstance(value, Mapping):
        return {name: value}
    out = {}
    for key, inner in value.items():
        out.update(_leaves(f"{name}.{key}", inner))
    return out


def _data(config: ml_collections.ConfigDict) -> DataConfig:
    return DataConfig(
        dataset=config.dataset,
        split_mode=config.split_mode,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        synthetic=config.synthetic.to_dict(),
        # A run older than `file.*` has no such group.
        file=config.file.to_dict() if config.get("file") else None,
        # A run older than `temporal.*` never split on time: the defaults stand in.
        **{k: str(v) for k, v in (config.get("temporal") or {}).items()},
    )


def _model(m: ml_collections.ConfigDict) -> models.ModelConfig:
    if m.dtype not in models.DTYPES:
        raise ValueError(f"model.dtype={m.dtype!r}; expected one of {sorted(models.DTYPES)}")
    return models.ModelConfig(
        max_len=int(m.max_len),
        hidden_size=int(m.hidden_size),
        num_layers=int(m.num_layers),
        num_heads=int(m.num_heads),
        intermediate_size=int(m.intermediate_size),
        hidden_dropout=float(m.hidden_dropout),
        attention_dropout=float(m.attention_dropout),
        layer_norm_eps=float(m.layer_norm_eps),
        init_std=float(m.init_std),
        dtype=models.DTYPES[m.dtype],
        attention_impl=m.attention_impl or None,
        # A run older than side features has neither field: both off.
        item_features=bool(m.get("item_features", False)),
        user_features=str(m.get("user_features", "") or ""),
        kind=str(m.get("kind", "bert4rec")),  # older runs have no field: BERT4Rec
        last_block=str(m.get("last_block", "all")),  # older runs computed every row
    )


def _input(config: ml_collections.ConfigDict, model: models.ModelConfig) -> cloze.InputConfig:
    inp = config.input
    next_item = model.next_item
    return cloze.InputConfig(
        max_len=model.max_len,
        mask_prob=float(inp.mask_prob),
        # A next-item row predicts at every position; input.max_predictions is cloze's.
        max_predictions=model.max_len if next_item else int(inp.max_predictions),
        sliding_step=int(inp.sliding_step),
        dupe_factor=int(inp.dupe_factor),
        fresh_masks=bool(inp.fresh_masks),
        mask_replacement=str(inp.mask_replacement),
        mask_last_copy=bool(inp.mask_last_copy),
        # Runs older than these three fields weighed every instance alike, made one mask-last
        # copy per window per epoch, and made their batches with tf.data.
        mask_last_weight=float(inp.get("mask_last_weight", 1.0)),
        mask_last_share=float(inp.get("mask_last_share", 0.0)),
        prefetch=int(inp.prefetch),
        seed=int(config.seed),
        pipeline=str(inp.get("pipeline", "tf.data")),
        # Runs older than buckets had none: off.
        buckets=tuple(int(b) for b in inp.get("buckets", ())),
        next_item=next_item,
    )


def _loss(config: ml_collections.ConfigDict) -> losses.LossConfig:
    loss = config.get("loss")
    if loss is None:  # a run older than the block trained with the defaults
        return losses.LossConfig()
    return losses.LossConfig(
        type=str(loss.type),
        auto_chunk_above=int(loss.auto_chunk_above),
        chunk_size=int(loss.chunk_size),
        num_negatives=int(loss.num_negatives),
        proposal=str(loss.proposal),
        gbce_t=float(loss.gbce_t),
        gbce_shift=bool(loss.get("gbce_shift", False)),  # older runs: unshifted
    )


def _eval(
    e: ml_collections.ConfigDict, model: models.ModelConfig, inp: cloze.InputConfig
) -> EvalConfig:
    return EvalConfig(
        max_len=model.max_len,
        protocols=tuple(e.protocols),
        num_negatives=int(e.num_negatives),
        ks=tuple(int(k) for k in e.ks),
        batch_size=int(e.batch_size),
        item_chunk=int(e.item_chunk),
        exclude_history=bool(e.exclude_history),
        candidate_seed=int(e.candidate_seed),
        buckets=inp.buckets,  # evaluation encodes with training's buckets
    )


def _train(config: ml_collections.ConfigDict) -> TrainConfig:
    c, e = config, config.eval
    return TrainConfig(
        seed=int(c.seed),
        batch_size=int(c.batch_size),
        num_train_steps=int(c.num_train_steps),
        learning_rate=float(c.learning_rate),
        warmup_steps=int(c.warmup_steps),
        lr_decay=str(c.get("lr_decay", "linear")),  # older runs decayed linearly
        weight_decay=float(c.weight_decay),
        clip_norm=float(c.clip_norm),
        adam_bias_correction=bool(c.adam_bias_correction),
        adam_b1=float(c.adam_b1),
        adam_b2=float(c.adam_b2),
        adam_eps=float(c.adam_eps),
        log_every_steps=int(c.log_every_steps),
        checkpoint_every_steps=int(c.checkpoint_every_steps),
        keep_checkpoints=int(c.keep_checkpoints),
        eval_every_steps=int(e.every_steps),
        num_valid_users=int(e.num_valid_users),
        metric=str(e.metric),
        early_stopping_patience=int(e.early_stopping_patience),
    )


def _mesh(config: ml_collections.ConfigDict) -> MeshConfig:
    mesh = config.get("mesh")
    if mesh is None:  # a run older than the block used every device for data
        return MeshConfig()
    return MeshConfig(data=int(mesh.data), model=int(mesh.model))
