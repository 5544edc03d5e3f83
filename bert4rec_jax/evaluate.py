"""Evaluates a trained workdir (or the popularity baseline) and prints a table of metrics.

    python -m bert4rec_jax.evaluate --workdir=/tmp/bert4rec --split=test --protocol=pop100,full
    python -m bert4rec_jax.evaluate --workdir=/tmp/bert4rec --model=popularity

Writes the numbers as JSON beside the checkpoints: <workdir>/eval_<model>_<split>.json.
"""

import json
import pathlib

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's workdir (holds config.json, checkpoints).")
flags.DEFINE_enum("split", "test", ["test", "valid"], "Which held-out item to rank.")
flags.DEFINE_list("protocol", ["pop100"], "Comma-separated: pop100, uniform100, full.")
flags.DEFINE_enum("model", "bert4rec", ["bert4rec", "popularity"], "What scores the items.")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which saved parameters to use.")
flags.DEFINE_integer("num_users", 0, "Evaluate a seeded sample of this many users; 0 = all.")
flags.DEFINE_string("data_dir", None, "Override the run's config.data_dir.")
flags.DEFINE_string("manual_dir", None, "Override the run's config.manual_dir (offline copy).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from bert4rec_jax import checkpointing, evaluation, train_lib
    from bert4rec_jax import sharding as sharding_lib
    from bert4rec_jax.datasets.corpus import leave_one_out
    from bert4rec_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    config = checkpointing.load_config(FLAGS.workdir)
    if FLAGS.data_dir is not None:
        config.data_dir = FLAGS.data_dir
    if FLAGS.manual_dir is not None:
        config.manual_dir = FLAGS.manual_dir
    config.eval.protocols = tuple(FLAGS.protocol)
    mesh = sharding_lib.make_mesh()
    train_lib.validate_config(config, mesh)

    corpus = train_lib.load_data(config)
    split = leave_one_out(corpus, config.split_mode)
    evaluator = train_lib.make_evaluator(config, corpus, split, mesh)
    if FLAGS.model == "popularity":
        encode_fn, score_fn, params = evaluation.popularity_fns(corpus)
        step = None
    else:
        params, step = checkpointing.restore_params(FLAGS.workdir, FLAGS.checkpoint)
        encode_fn, score_fn = train_lib.model_fns(train_lib.make_model(config, corpus))
    results = evaluator.evaluate(params, encode_fn, score_fn, FLAGS.split, FLAGS.num_users)

    where = f"step {step} ({FLAGS.checkpoint})" if step is not None else "popularity baseline"
    print(f"{config.dataset}, {FLAGS.split} split, {where}:")
    print(evaluation.format_table(results))
    out = pathlib.Path(FLAGS.workdir) / f"eval_{FLAGS.model}_{FLAGS.split}.json"
    if jax.process_index() == 0:
        record = {"step": step, "split": FLAGS.split, "model": FLAGS.model}
        record.update({k: float(v) for k, v in results.items()})
        out.write_text(json.dumps(record, indent=2))
        logging.info("Wrote %s", out)


if __name__ == "__main__":
    app.run(main)
