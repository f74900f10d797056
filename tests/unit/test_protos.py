"""The checked-in gRPC stubs are exactly what grpcio-tools generates from protos/cluster.proto.

Regenerates with scripts/gen_protos.sh into a temporary folder (using this
interpreter's grpc_tools) and compares byte for byte. No sockets, no sleeps.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = ("cluster_pb2.py", "cluster_pb2_grpc.py")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Run scripts/gen_protos.sh into a fresh folder; return the folder holding the stubs."""
    out = tmp_path_factory.mktemp("protos")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
                            env=dict(os.environ, PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "gen_protos.sh failed:\n%s%s" % (result.stdout, result.stderr)
    return out / "geomys" / "cluster" / "pb"


@pytest.mark.parametrize("name", STUBS)
def test_checked_in_stub_equals_freshly_generated_one(generated, name):
    fresh = (generated / name).read_bytes()
    checked_in = (ROOT / "geomys" / "cluster" / "pb" / name).read_bytes()
    assert fresh == checked_in, (
        "geomys/cluster/pb/%s is stale: run scripts/gen_protos.sh and commit the result" % name)


def test_generator_writes_only_the_two_stubs(generated):
    assert sorted(p.name for p in generated.iterdir()) == sorted(STUBS)


def test_generated_grpc_stub_imports_the_package_module(generated):
    # Without the -I mapping, protoc emits a bare `import cluster_pb2` (grpc/grpc#9575).
    text = (generated / "cluster_pb2_grpc.py").read_text()
    assert "from geomys.cluster.pb import cluster_pb2" in text
    assert "\nimport cluster_pb2" not in text
