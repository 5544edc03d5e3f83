"""Config -> corpus, split, model, scoring functions, evaluator: the glue every command shares.

Training, evaluation, export and the benchmarks all start from a config (a file, or the
`config.json` a run left in its workdir) and need the same objects built the same way:

    exp = Experiment.from_config(config)        # checks the config, then loads the data
    evaluator = exp.evaluator(mesh)              # the model's scoring functions, jitted once
    results = evaluator.evaluate(params, "test")

Only what these commands share lives here; what is particular to training (batch size against the
mesh, the schedule, the loop) stays in `train_lib`.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from bert4rec_jax import models, scoring
from bert4rec_jax.datasets import prepared
from bert4rec_jax.datasets.corpus import SPLIT_MODES, Corpus, Split, leave_one_out
from bert4rec_jax.datasets.prepared import DATASETS
from bert4rec_jax.evaluation import EvalConfig, Evaluator

# Sampled candidates are cached beside the data sets, so every run on a data set shares them.
CANDIDATES_DIRNAME = "bert4rec_candidates"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails, naming the field, on what every command reads: data set, split, model, eval.

    Runs before any data is loaded, so a bad value costs nothing.

    Raises:
      ValueError: on the first bad field.
    """
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset={config.dataset!r}: unknown data set; choose one of {DATASETS}")
    if config.split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode={config.split_mode!r}: must be one of {SPLIT_MODES}")
    # The model's and evaluation's own fields are checked where they are read; building both
    # configs here runs those checks (the vocabulary size is known only after loading).
    models.ModelConfig.from_config(config, vocab_size=3)
    EvalConfig.from_config(config)


def load_data(config: ml_collections.ConfigDict) -> Corpus:
    """The config's corpus. With several processes, process 0 prepares it first and the others
    then read its cache, so they never prepare the same files at once.

    A corpus already prepared into the data directory is read without TensorFlow; only preparing
    one imports it (TFDS builders), so machines without TensorFlow train from prepared data.
    """
    request = dict(
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        synthetic=config.synthetic.to_dict(),
        # .get: the config.json of a run older than `file.*` has no such group.
        file=config.file.to_dict() if config.get("file") else None,
    )

    def load() -> Corpus:
        corpus = prepared.load_prepared(config.dataset, **request)
        if corpus is None:
            from bert4rec_jax.datasets import loading  # TensorFlow: only to prepare a data set

            corpus = loading.load_corpus(config.dataset, **request)
        return corpus

    if jax.process_count() == 1:
        return load()
    corpus = load() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("bert4rec_jax: corpus prepared")
    return corpus if corpus is not None else load()


def candidates_dir(config: ml_collections.ConfigDict) -> epath.Path:
    """Where sampled evaluation candidates are cached: beside the data sets."""
    return prepared.data_root(config.data_dir) / CANDIDATES_DIRNAME


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A config with its data and model built.

    Attributes:
      config: the config it was built from.
      corpus: the data set.
      split: its leave-one-out split (`config.split_mode`).
      model: the BERT4Rec model sized for the corpus.
      eval_config: the evaluation settings.
    """

    config: ml_collections.ConfigDict
    corpus: Corpus
    split: Split
    model: models.BERT4Rec
    eval_config: EvalConfig

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Experiment:
        """Checks the config (`check_config`), then loads the corpus and builds the model."""
        check_config(config)
        corpus = load_data(config)
        model = models.build_model(
            config,
            corpus.vocab_size,
            item_features=corpus.item_features,
            user_features=corpus.user_features,
            dataset=f"dataset={config.dataset!r}",
        )
        return cls(
            config=config,
            corpus=corpus,
            split=leave_one_out(corpus, config.split_mode),
            model=model,
            eval_config=EvalConfig.from_config(config),
        )

    @property
    def scoring_fns(self) -> scoring.ScoringFns:
        return scoring.scoring_fns(self.model)

    def evaluator(
        self,
        mesh: jax.sharding.Mesh,
        fns: scoring.ScoringFns | None = None,
        eval_config: EvalConfig | None = None,
    ) -> Evaluator:
        """An evaluator of this corpus and split.

        Args:
          mesh: the mesh it scores on.
          fns: the scoring functions; default: the model's.
          eval_config: default: the config's.

        Returns:
          The evaluator; sampled candidates are cached under `candidates_dir(config)`.
        """
        return Evaluator(
            self.corpus,
            self.split,
            eval_config or self.eval_config,
            fns or self.scoring_fns,
            mesh=mesh,
            cache_dir=candidates_dir(self.config),
        )

    def describe(self) -> str:
        """One line on the data, for the logs."""
        c = self.corpus
        return (
            f"Data set {c.name}: {c.num_users} users, {c.num_items} items, "
            f"{c.num_interactions} interactions, {len(self.split.eval_users)} evaluated users "
            f"({self.split.mode} split)"
        )
