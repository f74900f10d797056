#!/usr/bin/env bash
# A local three-node Geomys cluster: node 1 bootstraps, nodes 2 and 3 join it.
#
# Usage: scripts/cluster.sh start|stop|status [DIR]
#
#   DIR               data, logs and PID files (default: ./geomys-cluster)
#   GEOMYS_BASE_PORT  client port of node 1 (default 6767); nodes 2 and 3 use the next two,
#                     and each node's gRPC port is its client port + 1000
#   GEOMYS            the server command (default: `geomys` on PATH, else `python3 -m geomys`)
#   PYTHON            interpreter with msgpack, for status when geomys-cli is missing
#   GEOMYS_*          any other server option, e.g. GEOMYS_HEARTBEAT_INTERVAL=0.5
#                     GEOMYS_FAILURE_TIMEOUT=2 (geomys reads its options from the environment)
#   GEOMYS_STOP_TIMEOUT  seconds `stop` waits for each node to exit (default 20)
#   GEOMYS_TLS_DIR    a folder of certificates: ca.pem, and nodeN.crt / nodeN.key for N = 1..3
#                     (scripts/make_certs.py DIR makes throwaway ones). With it, the nodes talk
#                     over mutual TLS (tls_cluster) and each also serves TLS clients on its client
#                     port + 100 (tls_port); the plaintext ports stay, on 127.0.0.1 only.
#
# Every node runs with persistence = writethrough and its own file in DIR.
# `stop` signals only the PIDs that `start` recorded (SIGTERM), waits a bounded
# time and reports; it never kills anything by name.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status [DIR]" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
action=$1
dir=${2:-./geomys-cluster}
base=${GEOMYS_BASE_PORT:-6767}
host=127.0.0.1
ids=(1 2 3)
start_timeout=${GEOMYS_START_TIMEOUT:-60}
stop_timeout=${GEOMYS_STOP_TIMEOUT:-20}
tls_dir=${GEOMYS_TLS_DIR:-}
tls_offset=100

case "$base" in '' | *[!0-9]*) echo "GEOMYS_BASE_PORT must be a port number, got '$base'" >&2; exit 2 ;; esac
if [ "$base" -lt 1 ] || [ $((base + 2 + 1000)) -gt 65535 ]; then
    echo "GEOMYS_BASE_PORT=$base leaves no room for three client ports and their gRPC ports (+1000)" >&2
    exit 2
fi

# The server command, and a Python that can import msgpack (the one geomys runs on).
if [ -n "${GEOMYS:-}" ]; then
    read -r -a server <<<"$GEOMYS"
elif command -v geomys >/dev/null 2>&1; then
    server=("$(command -v geomys)")
else
    server=("${PYTHON:-python3}" -m geomys)
fi
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    shebang=$(head -n 1 "${server[0]}" 2>/dev/null || true)
    case "$shebang" in '#!'*python*) PYTHON=${shebang#\#!} ;; esac
    case "${server[0]}" in *python*) PYTHON=${server[0]} ;; esac
fi

if [ -n "$tls_dir" ]; then
    tls_dir=$(cd "$tls_dir" 2>/dev/null && pwd) || { echo "GEOMYS_TLS_DIR: no folder at ${GEOMYS_TLS_DIR}" >&2; exit 2; }
    for file in ca.pem node1.crt node1.key node2.crt node2.key node3.crt node3.key; do
        if [ ! -r "$tls_dir/$file" ]; then
            echo "GEOMYS_TLS_DIR=$tls_dir lacks $file (scripts/make_certs.py $tls_dir makes throwaway ones)" >&2
            exit 2
        fi
    done
fi

port_of() { echo $((base + $1 - 1)); }
pid_file() { echo "$dir/node$1.pid"; }
log_file() { echo "$dir/node$1.log"; }

# A running geomys process started by this script for node $1, or nothing.
recorded_pid() {
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 1
    pid=$(cat "$file")
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled PID: the process must be this node's geomys.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-node_id=$1 " || return 1
    echo "$pid"
}

# INFO of the node on port $1 as one line: "role term leader_id applied members".
probe() {
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import socket, sys
import msgpack
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as sock:
        sock.sendall(msgpack.packb({"command": "INFO"}))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                sys.exit(1)
            unpacker.feed(data)
            for reply in unpacker:
                info = reply["value"]
                leader = info.get("leader_id")
                print(info.get("role"), info.get("term"), "-" if leader is None else leader,
                      info.get("replication_offset"), len(info.get("nodes") or {}))
                sys.exit(0)
except (OSError, KeyError, ValueError):
    sys.exit(1)
PY
}

# "role term leader applied" from geomys-cli when it exists and works, else from probe.
info_line() {
    local port=$1 out
    if command -v geomys-cli >/dev/null 2>&1 && out=$(geomys-cli -host "$host" -port "$port" info 2>/dev/null); then
        out=$(awk -F': ' '$1=="role"{r=$2} $1=="term"{t=$2} $1=="leader_id"{l=$2} $1=="replication_offset"{a=$2}
                          END{if (r != "") print r, t, (l=="(nil)"||l==""?"-":l), a}' <<<"$out")
        if [ -n "$out" ]; then
            echo "$out"
            return 0
        fi
    fi
    probe "$port" | awk '{print $1, $2, $3, $4}'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds)) rc
    until "$@"; do
        rc=$?
        [ $rc -eq 3 ] && return 1   # hopeless (the process exited): stop waiting
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out after ${seconds}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

answers() {  # answers ID: the node's process is alive (else status 3) and it answers INFO
    # Only "is it alive": right after the fork the PID may not have exec'd geomys yet.
    if ! kill -0 "$(cat "$(pid_file "$1")")" 2>/dev/null; then
        echo "node $1 exited; the end of its log ($(log_file "$1")):" >&2
        tail -n 20 "$(log_file "$1")" >&2
        return 3
    fi
    probe "$(port_of "$1")" >/dev/null
}

all_members() {  # every node lists three members
    local id line
    for id in "${ids[@]}"; do
        line=$(probe "$(port_of "$id")") || return 1
        [ "$(awk '{print $5}' <<<"$line")" = 3 ] || return 1
    done
}

launch() {  # launch ID ARGS...
    local id=$1 port tls=() tls_note=""
    shift
    port=$(port_of "$id")
    if [ -n "$tls_dir" ]; then
        tls=(-tls_cluster=yes -tls_port="$((port + tls_offset))" -tls_ca_file="$tls_dir/ca.pem"
             -tls_cert_file="$tls_dir/node$id.crt" -tls_key_file="$tls_dir/node$id.key")
        tls_note=", TLS client $host:$((port + tls_offset)), gRPC over mutual TLS"
    fi
    nohup "${server[@]}" -node_id="$id" -port="$port" -host="$host" \
        -persistence=writethrough -persistence_path="$dir/node$id.aof" ${tls[@]+"${tls[@]}"} "$@" \
        >>"$(log_file "$id")" 2>&1 </dev/null &
    echo $! >"$(pid_file "$id")"
    echo "node $id: pid $!, client $host:$port, gRPC $host:$((port + 1000))$tls_note, log $(log_file "$id")"
}

start() {
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local id
    for id in "${ids[@]}"; do
        if pid=$(recorded_pid "$id"); then
            echo "node $id is already running (pid $pid); run '$0 stop $dir' first" >&2
            exit 1
        fi
    done
    echo "cluster folder: $dir"
    launch 1 -bootstrap
    wait_for "$start_timeout" "node 1 to answer" answers 1 || { stop; exit 1; }
    for id in 2 3; do
        launch "$id" -join="$host:$(($(port_of 1) + 1000))"
        wait_for "$start_timeout" "node $id to answer" answers "$id" || { stop; exit 1; }
    done
    wait_for "$start_timeout" "all three nodes to be members" all_members || { stop; exit 1; }
    echo "cluster of 3 nodes is up"
    status
}

status() {
    [ -d "$dir" ] || { echo "no cluster folder at $dir" >&2; exit 1; }
    dir=$(cd "$dir" && pwd)
    echo "cluster folder: $dir"
    printf '%-5s %-8s %-6s %-10s %-6s %-7s %s\n' node pid port role term leader applied
    local id port pid line
    for id in "${ids[@]}"; do
        port=$(port_of "$id")
        if pid=$(recorded_pid "$id"); then
            line=$(info_line "$port" || true)
            [ -n "$line" ] || line="unreachable - - -"
        else
            pid=-
            line="stopped - - -"
        fi
        # shellcheck disable=SC2086
        printf '%-5s %-8s %-6s %-10s %-6s %-7s %s\n' "$id" "$pid" "$port" $line
    done
}

stop() {
    [ -d "$dir" ] || { echo "no cluster folder at $dir" >&2; exit 1; }
    dir=$(cd "$dir" && pwd)
    # Followers first (each asks the leader to remove it), the leader last.
    local id order=() leaders=() line failed=0
    for id in 3 2 1; do
        line=$(probe "$(port_of "$id")" || true)
        if [ "$(awk '{print $1}' <<<"$line")" = leader ]; then leaders+=("$id"); else order+=("$id"); fi
    done
    order+=(${leaders[@]+"${leaders[@]}"})
    for id in "${order[@]}"; do
        local pid
        if ! pid=$(recorded_pid "$id"); then
            [ -f "$(pid_file "$id")" ] && echo "node $id: not running"
            rm -f "$(pid_file "$id")"
            continue
        fi
        kill -TERM "$pid"
        local deadline=$((SECONDS + stop_timeout))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $id (pid $pid) still running ${stop_timeout}s after SIGTERM; left alone" >&2
            failed=1
        else
            echo "node $id (pid $pid) stopped"
            rm -f "$(pid_file "$id")"
        fi
    done
    return $failed
}

case "$action" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
