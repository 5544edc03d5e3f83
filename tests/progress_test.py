"""bert4rec_jax.progress: one progress line, redrawn on a terminal, plain lines in a log."""

import io

from bert4rec_jax import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_redrawn_line_and_a_log_plain_lines():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        line = progress.ProgressLine(200, "rows", stream, label="reading")
        line.update(50, "1 part")
        line.update(200, "4 parts", final=True)
    assert terminal.getvalue().startswith("\rreading: [") and " ETA " in terminal.getvalue()
    assert terminal.getvalue().count("\n") == 1  # only the final line ends one
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines[1].startswith("reading: [" + "#" * 30 + "] 100% 200/200 rows, 4 parts")


def test_unknown_totals_and_quick_jobs():
    log = io.StringIO()
    line = progress.ProgressLine(None, "rows", log)
    line.update(1234, "2 parts", final=True)
    assert log.getvalue() == "1,234 rows, 2 parts, 0:00:00\n"  # no bar, no ETA
    quiet = io.StringIO()
    line = progress.ProgressLine(10, "rows", quiet, delay_first=True)
    line.update(5, "")  # within the first interval: nothing yet
    assert quiet.getvalue() == "" and not line.shown
    assert progress.clock(3725) == "1:02:05"
