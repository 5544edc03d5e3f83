"""The documentation cannot go stale: every command of a bash block in the README and docs/, and
every import of a Python block, is checked against the code as it is.

A `python -m bert4rec_jax...` or `python benchmarks/...` command: its module exists, and its flags
parse as the command line would parse them, `--config=` file and `--config.a.b=` fields
included (absl's and ml_collections' own parsers, or the benchmark's argparse parser). A
`launch/tpu_pod.py` or `sbatch launch/slurm.sbatch` command: the launcher's options, and the
training flags it passes on as those of `bert4rec_jax.train`. Nothing trains: the modules are
imported in one child process and only their flags are parsed.
"""

import dataclasses
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO, device_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Commands that are not the project's (installers, linters, gcloud, tail...) are not checked.
PYTHON = ("python", "python3")


@dataclasses.dataclass(frozen=True)
class Check:
    """One thing the child process checks: kind "module" (python -m), "script" (python FILE),
    "tpu_pod" (the launcher's own options) or "python" (a Python block's imports)."""

    where: str  # file:line and the command, for the failure message
    kind: str
    target: str
    args: tuple[str, ...] = ()


def blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(line of the block's first line, its text) of every ```<language> fence in `text`."""
    found = []
    for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
        found.append((text[: m.start()].count("\n") + 2, m.group(1)))
    return found


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, as words: line continuations joined, comments and
    redirections dropped, split at `&&`, `||`, `;`, `|` and line ends."""
    text = block.replace("\\\n", " ")
    text = re.sub(r"\s\d?>&\d", " ", text)  # 2>&1
    text = re.sub(r"\s\d?>>?\s*\S+", " ", text)  # > file, 2> file
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def checks_of(words: list[str], where: str) -> list[Check]:
    """What to check of one command (nothing for commands that are not the project's)."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value command
        words = words[1:]
    if words[:1] == ["time"]:
        words = words[1:]
    if len(words) >= 3 and words[0] in PYTHON and words[1] == "-m":
        if words[2].startswith("bert4rec_jax"):
            return [Check(where, "module", words[2], tuple(words[3:]))]
        return []
    if len(words) >= 2 and words[0] in PYTHON and words[1].startswith("benchmarks/"):
        return [Check(where, "script", words[1], tuple(words[2:]))]
    if words and words[0].endswith("launch/tpu_pod.py"):
        args = words[1:]
        train = args[args.index("--") + 1 :] if "--" in args else []
        return [
            Check(where, "tpu_pod", "launch/tpu_pod.py", tuple(args)),
            Check(where, "module", "bert4rec_jax.train", tuple(train)),
        ]
    if words[:1] == ["sbatch"]:
        script = next(i for i, w in enumerate(words) if w.endswith("slurm.sbatch"))
        return [Check(where, "module", "bert4rec_jax.train", tuple(words[script + 1 :]))]
    return []


def python_imports(block: str) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) of every import statement of a Python block."""
    import ast

    found = []
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Import):
            found += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module, tuple(a.name for a in node.names)))
    return found


def checks_in(page: pathlib.Path, text: str) -> list[Check]:
    name = page.relative_to(REPO).as_posix()
    checks = []
    for line, block in blocks(text, "bash"):
        for words in shell_commands(block):
            checks += checks_of(words, f"{name}:{line}: {shlex.join(words)[:120]}")
    for line, block in blocks(text, "python"):
        for module, names in python_imports(block):
            checks.append(Check(f"{name}:{line}: import {module}", "python", module, names))
    return checks


# The child: imports each module once, defines its flags, parses each command's arguments with
# them, and removes them again (train, evaluate and export all define --workdir). Reads
# [[kind, target, args], ...] on stdin, prints one error message (or null) per check.
CHILD = r"""
import argparse, contextlib, importlib, importlib.util, io, json, pathlib, sys
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_bool("traceback", False, "")  # as cli.run defines it for every command line
checks = json.load(sys.stdin)
errors = [None] * len(checks)


class Parsed(Exception):
    pass


def load(path):
    spec = importlib.util.spec_from_file_location("docs_" + pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: dataclasses (flax modules among them) look their
    # module up in sys.modules while the file runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Command lines whose runs are positional arguments (`compare RUN_A RUN_B`, `report RUN...`).
POSITIONAL = {"bert4rec_jax.compare", "bert4rec_jax.report"}


def parse_absl(args, positional=False):
    FLAGS.unparse_flags()
    defined = set(FLAGS)
    sys.argv = ["program", *args]  # config_flags reads its --config.* overrides from sys.argv
    try:
        rest = FLAGS(sys.argv, known_only=False)
        if rest[1:] and not positional:
            raise ValueError(f"unexpected arguments {rest[1:]}")
        if positional and not rest[1:]:
            raise ValueError("no positional arguments (the runs)")
        for name in defined:
            flag = FLAGS[name]
            if type(flag).__name__ == "_ConfigFlag" and flag.present:
                flag.value.keys()  # a config file that failed to load raises on first use
    finally:
        for name in set(FLAGS) - defined:  # the overrides' flags, defined while parsing
            delattr(FLAGS, name)


def parse_argparse(main, args):
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise Parsed()

    argparse.ArgumentParser.parse_args = parse_only
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            if main.__code__.co_argcount:
                main(list(args))
            else:
                sys.argv = ["program", *args]
                main()
        raise RuntimeError("main() did not parse its arguments")
    except Parsed:
        pass
    except SystemExit:
        raise ValueError(stderr.getvalue().strip().splitlines()[-1])
    finally:
        argparse.ArgumentParser.parse_args = original


def check_group(kind, target, indices):
    before = set(FLAGS)
    try:
        if kind == "module":
            name = target
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                name += ".__main__"
            if spec is None or importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"no module {target}")
            module = importlib.import_module(name)
            if hasattr(module, "define_flags"):
                module.define_flags()
        elif kind in ("script", "tpu_pod"):
            if not pathlib.Path(target).is_file():
                raise FileNotFoundError(f"no file {target}")
            module = load(target)
        for i in indices:
            args = checks[i][2]
            try:
                if kind == "python":
                    found = importlib.util.find_spec(target)
                    if found is None:
                        raise ModuleNotFoundError(f"no module {target}")
                    if target.startswith("bert4rec_jax"):
                        module = importlib.import_module(target)
                        for attr in args:
                            if not hasattr(module, attr):
                                importlib.import_module(f"{target}.{attr}")
                elif kind == "tpu_pod":
                    module.parse_args(list(args))
                elif kind == "module" or set(FLAGS) - before:
                    parse_absl(args, kind == "module" and target in POSITIONAL)  # absl flags
                else:
                    parse_argparse(module.main, args)
            except BaseException as e:
                errors[i] = f"{type(e).__name__}: {e}"
    except BaseException as e:
        for i in indices:
            errors[i] = f"{type(e).__name__}: {e}"
    finally:
        for name in set(FLAGS) - before:
            delattr(FLAGS, name)


groups = {}
for i, (kind, target, args) in enumerate(checks):
    groups.setdefault((kind, target), []).append(i)
for (kind, target), indices in groups.items():
    check_group(kind, target, indices)
print(json.dumps(errors))
"""


def run_checks(checks: list[Check]) -> list[str | None]:
    """Each check's error message, None where it passed (one child process for all)."""
    payload = json.dumps([[c.kind, c.target, list(c.args)] for c in checks])
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=payload,
        cwd=REPO,
        env=device_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Stale blocks, each naming something that does not exist (or no longer does): the checks must
# refuse every one of them.
STALE = {
    "a renamed flag": "python -m bert4rec_jax.export --workdir=/tmp/w --output=/tmp/o --topk=5",
    "a misspelt field": "python -m bert4rec_jax.train --config=configs/tiny.py --workdir=W \\\n"
    "  --config.model.hidden_sizes=32",
    "a missing config file": "python -m bert4rec_jax.train --config=configs/no_such.py --workdir=W",
    "a moved module": "python -m bert4rec_jax.serving --workdir=W",
    "a bad value": "python -m bert4rec_jax.evaluate --workdir=W --split=train",
    "a benchmark's renamed option": "python benchmarks/buckets.py --data=D --bucket_sizes=4,8",
    "a launcher option": "launch/tpu_pod.py --name=n --zone=z --accelerator=v5p-8 --spotty -- \\\n"
    "  --config=configs/steam.py --workdir=W",
    "a pod's training flag": "launch/tpu_pod.py --name=n --zone=z --accelerator=v5p-8 -- \\\n"
    "  --config=configs/steam.py --workdir=W --config.no_such_field=1",
}
STALE_PYTHON = "from bert4rec_jax.recommend import Recommendr\n"


@pytest.fixture(scope="module")
def checked():
    """(the documented checks, the stale ones), each with its error (None = it passed)."""
    documented = [c for page in PAGES for c in checks_in(page, page.read_text())]
    stale = {
        name: checks_in(REPO / "stale.md", f"```bash\n{block}\n```\n")
        for name, block in STALE.items()
    }
    stale["a misspelt import"] = checks_in(REPO / "stale.md", f"```python\n{STALE_PYTHON}```\n")
    flat = documented + [c for group in stale.values() for c in group]
    errors = run_checks(flat)
    results = dict(zip(flat, errors, strict=True))
    return [(c, results[c]) for c in documented], {
        name: [(c, results[c]) for c in group] for name, group in stale.items()
    }


def test_every_documented_command_and_import_is_there(checked):
    documented, _ = checked
    kinds = {c.kind for c, _ in documented}
    # The pages show each kind: a sanity check that the parsing of blocks found them.
    assert kinds == {"module", "script", "tpu_pod", "python"}, kinds
    assert len(documented) > 20
    failures = [f"{c.where}\n    {error}" for c, error in documented if error]
    assert not failures, "stale documentation:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", sorted([*STALE, "a misspelt import"]))
def test_a_stale_block_fails_the_check(checked, name):
    _, stale = checked
    errors = [error for _, error in stale[name] if error]
    assert errors, f"{name}: {[c for c, _ in stale[name]]} passed"


def test_commands_are_split_as_a_shell_splits_them():
    block = (
        "# a comment\n"
        "A=1 python -m bert4rec_jax.train --config=configs/tiny.py \\\n"
        "  --workdir='/tmp/a b' && python benchmarks/x.py --n=2 2>&1 | tee log\n"
        "pip install -e . ; python -m pytest -n 2\n"
    )
    assert shell_commands(block) == [
        ["A=1", "python", "-m", "bert4rec_jax.train", "--config=configs/tiny.py",
         "--workdir=/tmp/a b"],
        ["python", "benchmarks/x.py", "--n=2"],
        ["tee", "log"],
        ["pip", "install", "-e", "."],
        ["python", "-m", "pytest", "-n", "2"],
    ]  # fmt: skip
    kinds = [[c.kind for c in checks_of(w, "")] for w in shell_commands(block)]
    assert kinds == [["module"], ["script"], [], [], []]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_page_and_its_section_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no file)")
            elif anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such section)")
    assert not broken, broken
    assert len(PAGES[0].read_text().splitlines()) <= 200  # the README stays an entrance
