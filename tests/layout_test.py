"""The layout: tests mirror the package (one `<module>_test.py` per module, in the module's
folder), and the package's imports run one way (no circle, lazy imports included)."""

import ast
import pathlib

from helpers import REPO

PACKAGE = REPO / "bert4rec_jax"
TESTS = REPO / "tests"


def _modules() -> dict[str, pathlib.Path]:
    """{dotted name: path} of every module of the package; a package is its __init__.py."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _defines_anything(path: pathlib.Path) -> bool:
    """Whether a module defines a function or a class (a package's __init__ that only gathers
    its submodules' names has nothing of its own to test)."""
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef | ast.ClassDef) for n in tree.body)


def expected_test_file(path: pathlib.Path) -> pathlib.Path | None:
    """tests/<folder>/<module>_test.py for bert4rec_jax/<folder>/<module>.py; a package's
    __init__.py and __main__.py are tested in tests/<package>/<package>_test.py."""
    relative = path.relative_to(PACKAGE)
    folder = relative.parent
    name = relative.stem
    if name in ("__init__", "__main__"):
        if name == "__init__" and not _defines_anything(path) or folder == pathlib.Path("."):
            return None
        name = folder.name
    return TESTS / folder / f"{name}_test.py"


def test_every_module_has_a_test_file_of_its_name_in_its_folder():
    missing = []
    for path in _modules().values():
        expected = expected_test_file(path)
        if expected is not None and not expected.exists():
            missing.append(f"{path.relative_to(REPO)} -> {expected.relative_to(REPO)}")
    assert not missing, "modules without their test file:\n" + "\n".join(missing)


def test_test_files_have_unique_names_and_folders_that_mirror_the_package():
    # pytest imports test files by their base name (rootdir-relative, no __init__.py files):
    # two files of one name in different folders would clash.
    files = sorted(TESTS.rglob("*_test.py"))
    names = [f.name for f in files]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for folder in {f.parent for f in files} - {TESTS}:
        assert (PACKAGE / folder.relative_to(TESTS)).is_dir(), f"{folder}: no such package"
    assert not list(TESTS.rglob("__init__.py"))


def imports_of(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules `path` imports anywhere in it: at the top, inside functions and
    under TYPE_CHECKING alike (each is an edge of the design, whenever it runs)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (its modules in order, the first repeated), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (circle := visit(name)):
            return circle
    return None


def test_find_circle_finds_one_and_only_one_that_is_there():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_imports_one_way():
    graph = import_graph()
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)
    # The layers named in DESIGN: atomic writes below everything; the run directory and the
    # checkpoints below the config they store; the cloze rules below the input paths that call
    # them; the artifact's layout free of the writer that fills it.
    assert graph["bert4rec_jax.atomic"] == set()
    assert "bert4rec_jax.config" not in graph["bert4rec_jax.workdir"]
    assert "bert4rec_jax.config" not in graph["bert4rec_jax.checkpointing"]
    assert not graph["bert4rec_jax.cloze"] & {
        "bert4rec_jax.input_pipeline",
        "bert4rec_jax.device_input",
    }
    assert not {
        m for m in graph["bert4rec_jax.export.artifact"] if m.startswith("bert4rec_jax.export")
    }
    # The data sets are the bottom layer: nothing of the package above them but the leaves that
    # import nothing of it (atomic writes, the progress line).
    leaves = {"bert4rec_jax.atomic", "bert4rec_jax.progress"}
    assert all(graph[leaf] == set() for leaf in leaves)
    for name, targets in graph.items():
        if name.startswith("bert4rec_jax.datasets"):
            above = {t for t in targets if not t.startswith("bert4rec_jax.datasets")}
            assert above <= leaves, (name, above)


def test_files_run_longest_first_by_measured_seconds_or_their_markers_estimate():
    import conftest

    class Item:
        def __init__(self, nodeid, slow=False):
            self.nodeid, self.path, self.slow = nodeid, pathlib.Path(nodeid.split("::")[0]), slow

        def get_closest_marker(self, name):
            return self.slow if name == "slow" else None

    class Cache:
        def get(self, key, default):
            assert key == conftest.DURATIONS_KEY
            return {"a_test.py::x": 30.0, "b_test.py::y": 1.0}  # measured by an earlier run

    class Config:
        cache = Cache()

    items = [
        Item("a_test.py::x"),  # 30 s measured
        Item("b_test.py::y"),  # 1 s measured, and an unknown slow test: 1 + 10 s estimated
        Item("b_test.py::z", slow=True),
        Item("c_test.py::w", slow=True),
        Item("c_test.py::v", slow=True),  # two unknown slow tests: 20 s
    ]
    conftest.pytest_collection_modifyitems(Config(), items)
    assert [i.nodeid for i in items] == [
        "a_test.py::x",
        "c_test.py::w",
        "c_test.py::v",  # a file's tests keep their order
        "b_test.py::y",
        "b_test.py::z",
    ]
