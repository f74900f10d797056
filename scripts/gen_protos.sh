#!/usr/bin/env bash
# Regenerate the Python gRPC stubs from protos/cluster.proto into geomys/cluster/pb/.
# Usage: scripts/gen_protos.sh [OUTPUT_ROOT]   (default: the repository root)
# The -I mapping makes the generated code import geomys.cluster.pb.cluster_pb2.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
mkdir -p "$out/geomys/cluster/pb"
cd "$root"
"${PYTHON:-python3}" -m grpc_tools.protoc -Igeomys/cluster/pb=protos \
    --python_out="$out" --grpc_python_out="$out" protos/cluster.proto
