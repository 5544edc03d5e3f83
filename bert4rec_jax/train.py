"""Trains BERT4Rec.

    python -m bert4rec_jax.train --config=configs/default.py --workdir=/tmp/bert4rec

Any config field can be overridden: `--config.num_train_steps=500 --config.model.dtype=bfloat16`.
Rerunning with the same workdir resumes from its latest checkpoint.

Several processes (hosts) train as one job when each runs the same command with `--distributed`:
on TPU pods and SLURM clusters JAX finds its peers from the environment; elsewhere give
`--coordinator_address`, `--num_processes` and `--process_id` (launch/local_multiprocess.sh does
this for processes on one machine).

SIGTERM and SIGINT stop the run cleanly at any moment, with exit status 0; rerunning the same
command completes it (see preemption.py).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from bert4rec_jax import cli, preemption

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host; see launch/)."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.DEFINE_bool(
    "start_afresh",
    False,
    "Train from step 0: first move the workdir's checkpoints, best parameters and test results "
    "into <workdir>/set_aside/<time>/ (kept, not deleted).",
)
flags.DEFINE_bool(
    "test",
    True,
    "Evaluate the chosen parameters on the test split at the end; --notest for recipe searches, "
    "which choose on validation only (benchmarks/search.py).",
)
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        _run()
    finally:
        # Done, stopped or failed: a signal has nothing left to stop (see ignore_from_now).
        preemption.ignore_from_now()


def _run() -> None:
    config = FLAGS.config
    config.get("dataset")  # a config file that failed to load fails here, before any output
    preemption.at("startup")
    import jax

    from bert4rec_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    if FLAGS.distributed:
        # CPU devices need a collectives library to reach other processes; the setting only
        # concerns the CPU backend, so it is harmless beside GPUs and TPUs.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        preemption.coordinate()
    if preemption.stop_now():
        # Nothing has been read or written yet: a rerun starts as this one would have.
        logging.info("Stopping on %s before the run began; nothing written", preemption.received())
        return
    from bert4rec_jax import config as config_lib
    from bert4rec_jax import train_lib

    # Parsed once, here: past this line only the RunConfig and its sections go down.
    run = config_lib.RunConfig.from_config_dict(config)  # fails naming the first bad field

    if jax.process_count() > 1:  # one process: train_lib's first lines say the devices
        logging.info(
            "JAX process %d/%d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
    train_lib.train_and_evaluate(
        run, FLAGS.workdir, start_afresh=FLAGS.start_afresh, test=FLAGS.test
    )


if __name__ == "__main__":
    # First, before the heavy imports: from here on a signal asks the run to stop where it is safe.
    preemption.install()
    cli.run(main)
