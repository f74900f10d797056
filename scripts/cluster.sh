#!/usr/bin/env bash
# A local three-node Geomys cluster to run, break and watch heal: node 1
# bootstraps, nodes 2 and 3 join it.
#
# Usage: scripts/cluster.sh VERB [N] [DIR]
#
#   start [DIR]       start all three nodes (none may be running)
#   start N [DIR]     restart stopped node N and rejoin it while the others keep serving
#   stop [DIR]        stop every node (SIGTERM; a paused node is resumed first)
#   status [DIR]      one line per node: pid, port, state, role, term, leader, applied index
#   watch [DIR]       redraw the status every second, with a log of what changed, until Ctrl-C
#   kill N [DIR]      kill node N at once (SIGKILL), as a crash would
#   pause N [DIR]     freeze node N (SIGSTOP), as a long GC pause or a stalled VM would
#   resume N [DIR]    let a paused node N run again (SIGCONT)
#
#   N                 a node number: 1, 2 or 3
#   DIR               data, logs and PID files (default: ./geomys-cluster)
#   GEOMYS_BASE_PORT  client port of node 1 (default 6767); nodes 2 and 3 use the next two,
#                     and each node's gRPC port is its client port + 1000
#   GEOMYS            the server command (default: `geomys` on PATH, else `python3 -m geomys`)
#   PYTHON            interpreter with msgpack, to read the nodes' INFO (default: the one geomys runs on)
#   GEOMYS_*          any other server option, e.g. GEOMYS_HEARTBEAT_INTERVAL=0.5
#                     GEOMYS_FAILURE_TIMEOUT=2 (geomys reads its options from the environment)
#   GEOMYS_START_TIMEOUT / GEOMYS_STOP_TIMEOUT  seconds to wait for a node to start (60) / stop (20)
#   GEOMYS_TLS_DIR    a folder of certificates: ca.pem, and nodeN.crt / nodeN.key for N = 1..3
#                     (scripts/make_certs.py DIR makes throwaway ones). With it, the nodes talk
#                     over mutual TLS (tls_cluster) and each also serves TLS clients on its client
#                     port + 100 (tls_port); the plaintext ports stay, on 127.0.0.1 only.
#
# Every node runs with persistence = writethrough and its own file DIR/nodeN.aof,
# which a restart keeps. The verbs act only on the PIDs this script recorded in
# DIR, and only while /proc shows that PID running this node's geomys on this
# DIR's file: never on a process found by name. Exit status: 0 done, 1 refused
# or failed (the message says why), 2 usage.
set -euo pipefail

usage() {
    cat >&2 <<EOF
usage: $0 start|stop|status|watch [DIR]
       $0 start|kill|pause|resume N [DIR]      (N is 1, 2 or 3)
EOF
    exit 2
}

is_node() { case "$1" in 1 | 2 | 3) return 0 ;; *) return 1 ;; esac; }

[ $# -ge 1 ] || usage
action=$1
shift
node=
case "$action" in
    kill | pause | resume)
        [ $# -ge 1 ] && is_node "$1" || usage
        node=$1
        shift
        ;;
    start)
        # A number is a node number (one that is not 1-3 is an error); anything else is DIR.
        case "${1:-}" in '' | *[!0-9]*) ;; *) is_node "$1" || usage; node=$1; shift ;; esac
        ;;
    stop | status | watch) ;;
    *) usage ;;
esac
[ $# -le 1 ] || usage
dir=${1:-./geomys-cluster}
[ -d "$dir" ] && dir=$(cd "$dir" && pwd)
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
data_file() { echo "$dir/node$1.aof"; }

need_dir() { [ -d "$dir" ] || { echo "no cluster folder at $dir" >&2; exit 1; }; }

# The scheduler state of process $1 (R, S, T for stopped by a signal, Z for a zombie...), or failure.
# (Builtins only, no subprocesses: `watch` runs this several times a second.)
proc_state() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    echo "${stat%% *}"
}

# The PID this script recorded for node $1, if that process is alive and is this node's geomys.
recorded_pid() {
    local file="$dir/node$1.pid" pid state arg node_ok="" file_ok=""
    [ -f "$file" ] && read -r pid <"$file" || return 1
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    state=$(proc_state "$pid") || return 1
    case "$state" in Z | X) return 1 ;; esac
    # Guard against a recycled PID: its arguments must be this node's, on this folder's file.
    local -a args=()
    mapfile -d '' args 2>/dev/null <"/proc/$pid/cmdline" || return 1
    for arg in "${args[@]}"; do
        [ "$arg" = "-node_id=$1" ] && node_ok=1
        [ "$arg" = "-persistence_path=$dir/node$1.aof" ] && file_ok=1
    done
    [ -n "$node_ok" ] && [ -n "$file_ok" ] || return 1
    echo "$pid"
}

is_paused() { case "$(proc_state "$1" || true)" in T | t) return 0 ;; *) return 1 ;; esac; }
is_running() { ! is_paused "$1"; }

# INFO of the nodes on ports $1...: one line each, "role term leader applied member-ids" (ids
# comma-separated), or "unreachable - - - -". Fails if the first port does not answer.
probe() {
    "$PYTHON" - "$@" <<'PY' 2>/dev/null
import socket, sys
import msgpack

def info(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(msgpack.packb({"command": "INFO"}))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("closed")
            unpacker.feed(data)
            for reply in unpacker:
                return reply["value"]

answered = []
for port in sys.argv[1:]:
    try:
        value = info(int(port))
        leader = value.get("leader_id")
        members = ",".join(str(i) for i in sorted(int(k) for k in value.get("nodes") or {})) or "-"
        print(value.get("role"), value.get("term"), "-" if leader is None else leader,
              value.get("replication_offset"), members)
        answered.append(True)
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        print("unreachable - - - -")
        answered.append(False)
sys.exit(0 if answered[0] else 1)
PY
}

field() { awk -v n="$1" '{print $n}' <<<"$2"; }

lists_member() { [[ ",$1," == *",$2,"* ]]; }  # lists_member IDS ID

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
        [ "$(field 5 "$line" | tr ',' ' ' | wc -w)" = 3 ] || return 1
    done
}

leader=
leader_without() {  # leader_without ID: a running node leads and no longer counts ID as a member; sets $leader
    local id pid line
    for id in "${ids[@]}"; do
        [ "$id" = "$1" ] && continue
        pid=$(recorded_pid "$id") && ! is_paused "$pid" || continue
        line=$(probe "$(port_of "$id")") || continue
        if [ "$(field 1 "$line")" = leader ] && ! lists_member "$(field 5 "$line")" "$1"; then
            leader=$id
            return 0
        fi
    done
    return 1
}

is_follower_of() {  # is_follower_of ID LEADER: ID answers as a follower of LEADER, and LEADER lists it
    local line
    answers "$1" || return
    line=$(probe "$(port_of "$1")") || return 1
    [ "$(field 1 "$line")" = follower ] && [ "$(field 3 "$line")" = "$2" ] || return 1
    line=$(probe "$(port_of "$2")") || return 1
    lists_member "$(field 5 "$line")" "$1"
}

wait_exited() {  # wait_exited PID SECONDS: until the process is gone (a zombie counts as gone)
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt "$deadline" ]; do
        case "$(proc_state "$1" || echo gone)" in Z | X | gone) return 0 ;; esac
        sleep 0.1
    done
    return 1
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
        -persistence=writethrough -persistence_path="$(data_file "$id")" ${tls[@]+"${tls[@]}"} "$@" \
        >>"$(log_file "$id")" 2>&1 </dev/null &
    echo $! >"$(pid_file "$id")"
    echo "node $id: pid $!, client $host:$port, gRPC $host:$((port + 1000))$tls_note, log $(log_file "$id")"
}

start() {
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local id pid
    for id in "${ids[@]}"; do
        if pid=$(recorded_pid "$id"); then
            echo "node $id is already running (pid $pid); run '$0 stop $dir' first, or '$0 start N $dir'" \
                "for a node that is stopped" >&2
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

start_node() {  # start N: rejoin one stopped node to the running cluster
    need_dir
    local pid id others=0
    if pid=$(recorded_pid "$node"); then
        echo "node $node is already running (pid $pid); nothing to do" >&2
        exit 1
    fi
    for id in "${ids[@]}"; do
        if [ "$id" != "$node" ] && recorded_pid "$id" >/dev/null; then
            others=$((others + 1))
        fi
    done
    if [ $others -eq 0 ]; then
        echo "no other node is running; start the whole cluster with '$0 start $dir'" >&2
        exit 1
    fi
    # A node id is refused while the leader still counts the old process as a member,
    # which lasts until the leader notices the silence (failure_timeout).
    if ! leader_without "$node"; then
        echo "waiting for a leader that no longer counts node $node as a member (up to ${start_timeout}s)..."
        wait_for "$start_timeout" "a leader that has removed node $node (is a majority running?)" \
            leader_without "$node" || exit 1
    fi
    echo "joining node $node through the leader, node $leader, on its file $(data_file "$node")" \
        "(a joining node takes the leader's state)"
    launch "$node" -join="$host:$(($(port_of "$leader") + 1000))"
    wait_for "$start_timeout" "node $node to follow node $leader" is_follower_of "$node" "$leader" || exit 1
    echo "node $node is back as a follower"
    status
}

signal_node() {  # kill / pause / resume N
    need_dir
    local pid
    if ! pid=$(recorded_pid "$node"); then
        echo "node $node is not running (stopped); nothing to $action" >&2
        exit 1
    fi
    case "$action" in
        kill)
            kill -KILL "$pid"
            wait_exited "$pid" 10 || { echo "node $node (pid $pid) survived SIGKILL for 10s" >&2; exit 1; }
            rm -f "$(pid_file "$node")"
            echo "node $node (pid $pid) killed (SIGKILL); its file $(data_file "$node") is kept:" \
                "'$0 start $node $dir' brings it back"
            ;;
        pause)
            is_paused "$pid" && { echo "node $node (pid $pid) is already paused" >&2; exit 1; }
            kill -STOP "$pid"
            wait_for 10 "node $node to stop running" is_paused "$pid" || exit 1
            echo "node $node (pid $pid) paused (SIGSTOP); '$0 resume $node $dir' lets it run again"
            ;;
        resume)
            is_paused "$pid" || { echo "node $node (pid $pid) is not paused; nothing to resume" >&2; exit 1; }
            kill -CONT "$pid"
            wait_for 10 "node $node to run again" is_running "$pid" || exit 1
            echo "node $node (pid $pid) resumed (SIGCONT)"
            ;;
    esac
}

# The status table: one row per node (node pid port state role term leader applied).
table() {
    local id pid ports=() lines=()
    local -A pids=() states=()
    for id in "${ids[@]}"; do
        states[$id]=stopped
        pids[$id]=-
        if pid=$(recorded_pid "$id"); then
            pids[$id]=$pid
            states[$id]=alive
            if is_paused "$pid"; then states[$id]=paused; else ports+=("$(port_of "$id")"); fi
        fi
    done
    # One interpreter asks every running node, so a redraw costs one Python start, not three.
    [ ${#ports[@]} -eq 0 ] || mapfile -t lines < <(probe "${ports[@]}" || true)
    printf '%-5s %-8s %-6s %-8s %-11s %-6s %-7s %s\n' node pid port state role term leader applied
    local row=0 info
    for id in "${ids[@]}"; do
        info="- - - -"
        if [ "${states[$id]}" = alive ]; then
            info=${lines[$row]:-unreachable - - - -}
            info=${info% *}   # drop the member list
            row=$((row + 1))
        fi
        # shellcheck disable=SC2086
        printf '%-5s %-8s %-6s %-8s %-11s %-6s %-7s %s\n' "$id" "${pids[$id]}" "$(port_of "$id")" \
            "${states[$id]}" $info
    done
}

status() {
    need_dir
    echo "cluster folder: $dir"
    table
}

watch() {
    need_dir
    trap 'echo; exit 0' INT
    local clear="" now rows id old new
    [ -t 1 ] && clear=$(printf '\033[H\033[2J')
    local -A last=()
    local changes=()
    while :; do
        now=$(date +%H:%M:%S)
        rows=$(table)
        # Each node's "state role term leader" against the previous redraw: the change log.
        while read -r id _ _ new; do
            [ "$id" = node ] && continue
            new=$(awk '{print $1, $2, $3, $4}' <<<"$new")
            old=${last[$id]:-}
            if [ -n "$old" ] && [ "$old" != "$new" ]; then
                changes+=("$now  node $id: $old  ->  $new")
            fi
            last[$id]=$new
        done <<<"$rows"
        [ ${#changes[@]} -le 8 ] || changes=("${changes[@]: -8}")
        printf '%s%s  cluster %s  (every 1 s; Ctrl-C to stop)\n\n%s\n\nchanges (state role term leader):\n' \
            "$clear" "$now" "$dir" "$rows"
        if [ ${#changes[@]} -eq 0 ]; then echo "  none yet"; else printf '  %s\n' "${changes[@]}"; fi
        echo
        sleep 1
    done
}

stop() {
    need_dir
    # Followers first (each asks the leader to remove it), the leader last.
    local id pid order=() leaders=() line failed=0
    for id in 3 2 1; do
        line=""
        if pid=$(recorded_pid "$id"); then
            is_paused "$pid" && kill -CONT "$pid"   # a frozen process cannot act on SIGTERM
            line=$(probe "$(port_of "$id")" || true)
        fi
        if [ "$(field 1 "$line")" = leader ]; then leaders+=("$id"); else order+=("$id"); fi
    done
    order+=(${leaders[@]+"${leaders[@]}"})
    for id in "${order[@]}"; do
        if ! pid=$(recorded_pid "$id"); then
            [ -f "$(pid_file "$id")" ] && echo "node $id: not running"
            rm -f "$(pid_file "$id")"
            continue
        fi
        kill -TERM "$pid"
        if wait_exited "$pid" "$stop_timeout"; then
            echo "node $id (pid $pid) stopped"
            rm -f "$(pid_file "$id")"
        else
            echo "node $id (pid $pid) still running ${stop_timeout}s after SIGTERM; left alone" >&2
            failed=1
        fi
    done
    return $failed
}

case "$action" in
    start) if [ -n "$node" ]; then start_node; else start; fi ;;
    stop) stop ;;
    status) status ;;
    watch) watch ;;
    kill | pause | resume) signal_node ;;
esac
