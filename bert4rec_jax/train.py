"""Trains BERT4Rec.

    python -m bert4rec_jax.train --config=configs/default.py --workdir=/tmp/bert4rec

Any config field can be overridden: `--config.num_train_steps=500 --config.model.dtype=bfloat16`.
Rerunning with the same workdir resumes from its latest checkpoint. On a multi-host slice, run the
same command on every host (see launch/); JAX finds its peers from the environment.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host; see launch/)."
)
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from bert4rec_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    if FLAGS.distributed:
        jax.distributed.initialize()
    from bert4rec_jax import train_lib

    logging.info(
        "JAX process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
