"""geomys.launcher: which program the one executable runs, by subcommand or by the name it is called."""

import pytest

from geomys.launcher import choose


@pytest.mark.parametrize("name, args, expected", [
    ("geomys", [], ("server", [])),
    ("/usr/local/bin/geomys", ["--port", "6380"], ("server", ["--port", "6380"])),
    ("geomys", ["cli", "-port", "6380", "get", "k"], ("cli", ["-port", "6380", "get", "k"])),
    ("geomys", ["benchmark", "-q"], ("benchmark", ["-q"])),
    ("/opt/bin/geomys-cli", ["get", "cli"], ("cli", ["get", "cli"])),
    ("geomys-benchmark", ["-t", "ping"], ("benchmark", ["-t", "ping"])),
    ("geomys", ["--config", "cli"], ("server", ["--config", "cli"])),
])
def test_the_program_comes_from_the_first_argument_or_the_name(name, args, expected):
    assert choose(name, args) == expected
