"""What every command line shares: a mistake in the flags, the config or the data ends in a short
message and exit status 2, not a traceback.

A user's mistake (a config file that is not there, a misspelt `--config.` field, a bad value, a
data set that cannot be read or downloaded) is told in at most three lines that name the flag or
the file and the fix. `--traceback` shows the full traceback instead. Errors that are not the
user's (a bug) keep their traceback.
"""

import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags

FLAGS = flags.FLAGS

USAGE_ERROR = 2  # the exit status of a mistake in the command line, as absl's usage errors

_PACKAGE_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("bert4rec_jax", "configs")
)
_CONFIG_LOAD_FAILED = ("Failed loading config file", "Configuration is not available")


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run(main), with the user's mistakes told in a few lines (exit status 2)."""
    # Defined here rather than on import: the recommend package is also a library, whose
    # importers keep their own flags.
    if "traceback" not in FLAGS:
        flags.DEFINE_bool(
            "traceback", False, "On a config, flag or data mistake, print the full traceback."
        )
    # TensorFlow's C++ INFO lines say nothing a user can act on; its warnings and errors still
    # show. Its oneDNN notice ignores that level and goes only with oneDNN itself, which speeds
    # up float kernels this package never runs in TensorFlow (tf.data only moves item ids).
    # Set before TensorFlow is first imported (the data sets import it).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        # FLAGS(argv) rather than absl's default parser, which tells a bad flag value itself
        # (two lines, exit status 1): here it is told like every other mistake.
        app.run(main, flags_parser=FLAGS)
    except Exception as e:
        message = explain(e, sys.argv[1:], parsed=FLAGS.is_parsed())
        if message is None or _wants_traceback():
            raise
        _fail(message)


def _wants_traceback() -> bool:
    # A mistake in the flags stops their parsing, so FLAGS.traceback may not be set yet.
    if FLAGS.is_parsed() and FLAGS.traceback:
        return True
    return any(a in ("--traceback", "--traceback=true", "--traceback=1") for a in sys.argv[1:])


def _fail(message: str) -> NoReturn:
    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    if program == "__main__":  # python -m bert4rec_jax.<command>
        program = "bert4rec_jax"
    lines = message.strip().splitlines()
    # At most two lines of message: the cause and the fix come first by convention.
    text = "\n".join(lines[:2])
    sys.stderr.write(f"{program}: error: {text}\n(--traceback shows where it was raised)\n")
    sys.exit(USAGE_ERROR)


def explain(error: BaseException, argv: list[str], parsed: bool) -> str | None:
    """The short message for a user's mistake, or None for an error that is not one.

    Args:
      error: what was raised.
      argv: the command line's arguments (without the program).
      parsed: whether the flags were parsed; an error while parsing them is always a mistake in
        the command line (ml_collections raises KeyError/AttributeError/ValueError/TypeError
        for a bad `--config.` override).

    Returns:
      One or two lines, or None.
    """
    text = str(error.args[0]) if error.args else str(error)
    if isinstance(error, OSError) and any(s in text for s in _CONFIG_LOAD_FAILED):
        return _config_file_message(text, argv)
    if isinstance(error, flags.Error):
        return _flag_message(text)
    if not parsed:
        return _override_message(error, text, argv)
    if isinstance(error, ValueError | OSError | KeyError) or type(error).__name__.endswith(
        "CheckpointError"
    ):
        # Only what this package raises on purpose; the same type from deep inside a library
        # is more likely a bug and keeps its traceback.
        frames = traceback.extract_tb(error.__traceback__)
        if frames and frames[-1].filename.startswith(_PACKAGE_DIRS):
            return text
    return None


def _config_file_message(text: str, argv: list[str]) -> str:
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = given[-1] if given else "?"
    if given and not os.path.exists(path.split(":", 1)[0]):
        return f"--config={path}: no such file; give a config file, e.g. --config=configs/tiny.py"
    # The file exists but failed to load: ml_collections's last line names the cause.
    cause = [line.strip() for line in text.splitlines() if line.strip()][-1]
    return f"--config={path}: cannot be loaded: {cause}"


def _flag_message(text: str) -> str:
    # absl's text: "flag --config.num_train_steps=ten: invalid literal for int() ...", or
    # "Unknown command line flag 'foo'".
    text = text.removeprefix("flag ")
    if text.startswith("--config."):
        return f"{text}; give a value of the field's type (configs/default.py shows each)"
    return f"{text}; --helpfull lists the flags"


def _override_message(error: BaseException, text: str, argv: list[str]) -> str:
    overrides = [a for a in argv if a.startswith("--config.")]
    if isinstance(error, KeyError | AttributeError):
        # ml_collections's text: "'num_train_step'\nDid you mean "num_train_steps" instead ...".
        key = re.match(r"\W*'?([\w.]+)", text)
        key = key.group(1) if key else ""
        flag = next((a.split("=", 1)[0] for a in overrides if key and key in a), "--config.?")
        hint = re.search(r'Did you mean "([^"]+)"', text)
        fix = f'; did you mean "{hint.group(1)}"?' if hint else " (configs/default.py lists them)"
        return f"{flag}: the config has no field {key!r}{fix}"
    # A value of the wrong type, e.g. --config.num_train_steps=ten.
    return f"{' '.join(overrides) or 'the flags'}: {text}"
