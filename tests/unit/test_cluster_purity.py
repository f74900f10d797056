"""The consensus core and its rules are pure: they import nothing that does I/O, threads or keeps time.

Checked on the source (the imports each module names), so a change that adds
such an import fails here whatever it does at run time.
"""

import ast
from pathlib import Path

import pytest

import geomys.cluster

CLUSTER = Path(geomys.cluster.__file__).parent
FORBIDDEN = {"threading", "time", "random", "os", "grpc", "socket", "msgpack", "socketserver", "subprocess",
             "asyncio", "concurrent", "select"}
PURE = ("core.py", "rules.py", "log.py")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports as '.')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", PURE)
def test_pure_cluster_module_imports_nothing_that_does_io_or_keeps_time(name):
    assert not imported_modules(CLUSTER / name) & FORBIDDEN


def test_the_check_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom threading import Lock\nfrom . import rules\n")
    assert imported_modules(sample) & FORBIDDEN == {"os", "threading"}
