#!/usr/bin/env bash
# Build dist/geomys: one self-contained executable carrying the server,
# `geomys cli` and `geomys benchmark`, with Python, grpcio's and msgpack's
# native code inside (PyInstaller, one-file mode; docs/deploy.md says why).
#
#   . .venv/bin/activate && pip install -e . && scripts/build_binary.sh
#
# It uses the active Python (or $PYTHON) and installs PyInstaller into it.
# DIST_DIR (default dist) and WORK_DIR (default build/pyinstaller) say where
# the executable and PyInstaller's scratch files go.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIST_DIR="${DIST_DIR:-dist}"
WORK_DIR="${WORK_DIR:-build/pyinstaller}"
PYINSTALLER_VERSION="6.22.3"

if ! "$PYTHON" -c "import grpc, msgpack, configargparse, google.protobuf" 2>/dev/null; then
    echo "build_binary.sh: $PYTHON lacks Geomys's dependencies; run 'pip install -e .' in its environment first" >&2
    exit 1
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check "pyinstaller==$PYINSTALLER_VERSION"
# --paths .: the checkout's geomys package, whatever is installed.
# --strip: the symbols of libpython and of the extensions are half of their size.
# grpc_tools (the stub generator, a test dependency) is reached by a hook, not by Geomys.
"$PYTHON" -m PyInstaller --onefile --name geomys --noconfirm --clean --log-level WARN --strip \
    --exclude-module grpc_tools \
    --paths . --distpath "$DIST_DIR" --workpath "$WORK_DIR" --specpath "$WORK_DIR" \
    geomys/__main__.py
echo "built $DIST_DIR/geomys ($(du -h "$DIST_DIR/geomys" | cut -f1))"
