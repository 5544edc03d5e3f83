"""The command line: a training run's checkpoint -> an export directory (`writer.py`).

python -m bert4rec_jax.export --workdir=/tmp/bert4rec --output=/tmp/bert4rec_export
"""

from __future__ import annotations

from absl import app, flags

from bert4rec_jax import cli
from bert4rec_jax.export.serving import DEFAULT_PLATFORMS
from bert4rec_jax.export.writer import DEFAULT_TOP_K, export_workdir


def define_flags() -> None:
    """The command line's flags (defined only when this module runs as the program)."""
    flags.DEFINE_string("workdir", None, "The training run's workdir (holds config.json).")
    flags.DEFINE_string("output", None, "The export directory to create.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which saved parameters.")
    flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Items returned per history (at most).")
    flags.DEFINE_string("data_dir", None, "Override the run's config.data_dir.")
    flags.DEFINE_string("manual_dir", None, "Override the run's config.manual_dir.")
    flags.DEFINE_bool("saved_model", True, "Also write a TensorFlow SavedModel.")
    flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS), "Lower for these: cpu, cuda, tpu.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
    flags.mark_flags_as_required(["workdir", "output"])


def main(argv: list[str]) -> None:
    from bert4rec_jax.metric_writer import quiet_library_logs

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    f = flags.FLAGS
    manifest = export_workdir(
        f.workdir,
        f.output,
        checkpoint=f.checkpoint,
        top_k=f.top_k,
        data_dir=f.data_dir,
        manual_dir=f.manual_dir,
        saved_model=f.saved_model,
        platforms=f.platforms,
        overwrite=f.overwrite,
    )
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    source = manifest["source"]
    print(
        f"Exported {source['dataset']} step {source['step']} ({source['checkpoint']}): "
        f"{manifest['num_items']} items, top_k={manifest['top_k']}, the model reads the last "
        f"{manifest['history_length']} items of a history, platforms "
        f"{','.join(manifest['platforms'])}"
    )
    print(f"Wrote {f.output} ({len(manifest['files'])} files, {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
