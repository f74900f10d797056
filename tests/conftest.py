"""Shared fixtures: `start_server` launches real geomys processes and cleans them up."""

import pytest

from tests.helpers import ServerProcess


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(**options) -> a running ServerProcess; all are killed at teardown."""
    started = []

    def factory(wait=True, extra_args=(), env=None, **options):
        server = ServerProcess(tmp_path / ("node%d" % len(started)), **options)
        started.append(server)
        return server.start(wait=wait, extra_args=extra_args, env=env)

    yield factory
    for server in started:
        server.cleanup()


@pytest.fixture
def server(start_server):
    """One fresh standalone server without persistence."""
    return start_server()
