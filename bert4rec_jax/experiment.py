"""Config -> corpus, split, model, scoring functions, evaluator: the glue every command shares.

Training, evaluation, export and the benchmarks all start from a config (a file, or the
`config.json` a run left in its workdir), parsed once, and need the same objects built the same way:

    run = RunConfig.from_config_dict(config)    # checks the config (`config.py`)
    exp = Experiment.from_run(run)              # loads the data, builds the model
    evaluator = exp.evaluator(mesh)              # the model's scoring functions, jitted once
    results = evaluator.evaluate(params, "test")

Only what these commands share lives here; what is particular to training (the schedule, the
loop) stays in `train_lib`.
"""

from __future__ import annotations

import dataclasses

import jax
from etils import epath
from jax.experimental import multihost_utils

from bert4rec_jax import models, scoring
from bert4rec_jax.config import DataConfig, RunConfig
from bert4rec_jax.datasets import prepared
from bert4rec_jax.datasets.corpus import Corpus, Split, make_split
from bert4rec_jax.evaluation import EvalConfig, Evaluator

# Sampled candidates are cached beside the data sets, so every run on a data set shares them.
CANDIDATES_DIRNAME = "bert4rec_candidates"


def load_data(data: DataConfig) -> Corpus:
    """The config's corpus. With several processes, process 0 prepares it first and the others
    then read its cache, so they never prepare the same files at once.

    A corpus already prepared into the data directory is read without TensorFlow; only preparing
    one imports it (TFDS builders), so machines without TensorFlow train from prepared data.
    """
    request = dict(
        data_dir=data.data_dir,
        manual_dir=data.manual_dir,
        synthetic=dict(data.synthetic),
        file=None if data.file is None else dict(data.file),
    )

    def load() -> Corpus:
        corpus = prepared.load_prepared(data.dataset, **request)
        if corpus is None:
            from bert4rec_jax.datasets import loading  # TensorFlow: only to prepare a data set

            corpus = loading.load_corpus(data.dataset, **request)
        return corpus

    if jax.process_count() == 1:
        return load()
    corpus = load() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("bert4rec_jax: corpus prepared")
    return corpus if corpus is not None else load()


def candidates_dir(data: DataConfig) -> epath.Path:
    """Where sampled evaluation candidates are cached: beside the data sets."""
    return prepared.data_root(data.data_dir) / CANDIDATES_DIRNAME


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A parsed config with its data and model built.

    Attributes:
      config: the parsed config it was built from.
      corpus: the data set.
      split: its leave-one-out split (`config.data.split_mode`).
      model: the model (`model.kind`) sized for the corpus.
    """

    config: RunConfig
    corpus: Corpus
    split: Split
    model: models.Model

    @classmethod
    def from_run(cls, run: RunConfig) -> Experiment:
        """Loads the corpus of a parsed config and builds its model."""
        corpus = load_data(run.data)
        model = models.build_model(
            run.model,
            corpus.vocab_size,
            item_features=corpus.item_features,
            user_features=corpus.user_features,
            dataset=f"dataset={run.data.dataset!r}",
        )
        return cls(
            config=run,
            corpus=corpus,
            split=make_split(
                corpus, run.data.split_mode, run.data.valid_start, run.data.test_start
            ),
            model=model,
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
          eval_config: default: the config's eval section.

        Returns:
          The evaluator; sampled candidates are cached under `candidates_dir`.
        """
        return Evaluator(
            self.corpus,
            self.split,
            eval_config or self.config.eval,
            fns or self.scoring_fns,
            mesh=mesh,
            cache_dir=candidates_dir(self.config.data),
        )

    def describe(self) -> str:
        """One line on the data, for the logs."""
        c, split = self.corpus, self.split
        evaluated = f"{len(split.eval_users)} evaluated users"
        if split.mode == "temporal":
            evaluated = (
                f"{len(split.users('valid'))} validation and {len(split.users('test'))} test users"
            )
        return (
            f"Data set {c.name}: {c.num_users} users, {c.num_items} items, "
            f"{c.num_interactions} interactions, {evaluated} ({split.mode} split)"
        )
