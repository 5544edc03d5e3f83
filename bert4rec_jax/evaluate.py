"""Evaluates a trained workdir (or the popularity baseline) and prints a table of metrics.

    python -m bert4rec_jax.evaluate --workdir=/tmp/bert4rec --split=test --protocol=pop100,full
    python -m bert4rec_jax.evaluate --workdir=/tmp/bert4rec --model=popularity  # its protocols

Only what evaluation needs is checked, so any protocol can be asked for and a run trained on many
devices is evaluated on one (with its item table split over `mesh.model` devices when this
machine's device count allows it). Prints the accuracy table, then the beyond-accuracy and
history-length tables (docs/evaluation_tools.md). Writes every number as JSON beside the
checkpoints, <workdir>/eval_<model>_<split>.json, and every evaluated user's outcome (target rank
per protocol, top items) as Parquet, <workdir>/eval_<model>_<split>_users.parquet, which
`python -m bert4rec_jax.compare` pairs with another run's.
"""

import dataclasses
import json

from absl import app, flags, logging

from bert4rec_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's workdir (holds config.json, checkpoints).")
flags.DEFINE_enum(
    "split", "test", ["test", "valid"], "Which held-out item to rank (`which` in the code)."
)
flags.DEFINE_list(
    "protocol",
    None,
    "Comma-separated: pop100, uniform100, full. Default: the run's eval.protocols.",
)
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

    from bert4rec_jax import checkpointing, evaluation, experiment, scoring, sharding
    from bert4rec_jax import config as config_lib
    from bert4rec_jax import workdir as workdir_lib
    from bert4rec_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    workdir, config = workdir_lib.open_run(
        FLAGS.workdir, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir
    )
    run_hash = workdir_lib.config_hash(config)  # the trained run's, before the overrides below
    if FLAGS.protocol:
        config.eval.protocols = tuple(FLAGS.protocol)
    run = config_lib.RunConfig.from_config_dict(config)
    exp = experiment.Experiment.from_run(run)
    if FLAGS.model == "popularity":
        fns, params = scoring.popularity_fns(exp.corpus, exp.split)
        step = None
    else:
        fns = exp.scoring_fns
        params, step = checkpointing.restore_params(
            workdir, FLAGS.checkpoint, vocab_size=exp.corpus.vocab_size
        )
    # The run's model axis (config.mesh.model splits the item table) over this machine's
    # devices, the rest on the data axis; a machine whose devices it does not divide (e.g. one
    # CPU) evaluates with the table whole. The evaluator lays the parameters out on the mesh.
    model_axis = run.mesh.model
    if jax.device_count() % model_axis:
        logging.warning(
            "mesh.model=%d does not divide the %d devices here: the item table is not split",
            model_axis,
            jax.device_count(),
        )
        model_axis = 1
    mesh = sharding.make_mesh(model=model_axis)
    # The scoring batch only sets how many users are scored at once, never the metrics: fit it
    # to this machine's devices, whatever the run was trained on.
    devices = sharding.data_parallelism(mesh)
    batch_size = -(-run.eval.batch_size // devices) * devices
    eval_config = dataclasses.replace(run.eval, batch_size=batch_size)
    evaluator = exp.evaluator(mesh, fns, eval_config)
    users = evaluator.user_results(params, FLAGS.split, FLAGS.num_users)
    results = evaluator.summary(users)

    where = f"step {step} ({FLAGS.checkpoint})" if step is not None else "popularity baseline"
    print(f"{run.data.dataset}, {FLAGS.split} split, {len(users.users)} users, {where}:")
    print(evaluation.format_table(evaluation.accuracy_metrics(results)))
    if "unseen_targets" in results:  # a temporal split: targets no one trained on, apart
        seen = {k.removeprefix("seen/"): v for k, v in results.items() if k.startswith("seen/")}
        print(
            f"\n{int(results['unseen_targets'])} targets never seen in training; "
            f"the other {int(results['seen/num_users'])} users:"
        )
        print(evaluation.format_table(evaluation.accuracy_metrics(seen)))
    print("\nBeyond accuracy (top-k lists; popularity = training users per item):")
    print(evaluation.format_beyond_table(results))
    print("\nBy history length (items before the target):")
    print(evaluation.format_history_table(results))
    if jax.process_index() == 0:
        users_out = workdir / workdir_lib.eval_users_file(FLAGS.model, FLAGS.split)
        stamp = {"model": FLAGS.model, "step": step, "config_hash": run_hash}
        users.with_info(**stamp).write(users_out)
        out = workdir / workdir_lib.eval_results_file(FLAGS.model, FLAGS.split)
        record = {"step": step, "split": FLAGS.split, "model": FLAGS.model}
        record.update({k: float(v) for k, v in results.items()})
        out.write_text(json.dumps(record, indent=2))
        logging.info("Wrote %s and %s", out, users_out)


if __name__ == "__main__":
    cli.run(main)
