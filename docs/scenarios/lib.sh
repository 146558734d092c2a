# Shared by the scenarios: throw-away network namespaces named kato-demo-*
# (removed on exit, with whatever runs in them), and the kato to run
# ($KATO, or the one on $PATH).
set -eu
KATO=${KATO:-kato}
DEMO_NS=""
# kato processes started on the host (trace, protect, agent): stopped on exit.
HOST_PIDS=""

netns() {
    for n; do
        ip netns add "$n"
        ip -n "$n" link set lo up
        DEMO_NS="$DEMO_NS $n"
    done
}

cleanup() {
    # The shell's notes on the jobs it loses are not the scenario's output.
    exec 2>/dev/null
    for p in $HOST_PIDS; do kill -INT "$p" || true; done
    for n in $DEMO_NS; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
        ip netns del "$n" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until COMMAND succeeds, as long as process PID lives.
wait_until() {
    pid=$1
    shift
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || { echo "process $pid ended before: $*" >&2; exit 1; }
        sleep 0.1
    done
}

in_ns() {
    n=$1
    shift
    ip netns exec "$n" "$@"
}

# Prints a kato command as typed, then runs it.
show() {
    printf '$ kato %s\n' "$*"
    "$KATO" "$@"
}

# `kato trace ARGS` in the background, its output kept in $TRACE_OUT, once
# it is watching (its banner on stderr).
trace_start() {
    TRACE_OUT=$(mktemp)
    TRACE_ERR=$(mktemp)
    printf '$ kato trace %s\n' "$*" >"$TRACE_OUT"
    "$KATO" trace "$@" >>"$TRACE_OUT" 2>"$TRACE_ERR" &
    TRACE_PID=$!
    HOST_PIDS="$HOST_PIDS $TRACE_PID"
    wait_until "$TRACE_PID" grep -q watching "$TRACE_ERR"
}

# Stops the trace (as Ctrl-C would) and prints what it showed.
trace_stop() {
    kill -INT "$TRACE_PID" || true
    wait "$TRACE_PID" || true
    cat "$TRACE_OUT"
    rm -f "$TRACE_OUT" "$TRACE_ERR"
}

# A Python one-liner's worth of sockets: `py NS CODE` runs CODE in NS.
py() {
    n=$1
    shift
    in_ns "$n" python3 -c "$1"
}

# A NAT that forgets idle flows: kato-demo-client (10.71.1.2) routed
# through kato-demo-nat, which masquerades, forgets established flows
# after 3 s without a packet and rejects what it forgot with a reset, to
# kato-demo-server (10.71.2.2).
nat_topology() {
    netns kato-demo-client kato-demo-nat kato-demo-server
    ip -n kato-demo-client link add c0 type veth peer name n0 netns kato-demo-nat
    ip -n kato-demo-nat link add n1 type veth peer name s0 netns kato-demo-server
    ip -n kato-demo-client addr add 10.71.1.2/24 dev c0
    ip -n kato-demo-nat addr add 10.71.1.1/24 dev n0
    ip -n kato-demo-nat addr add 10.71.2.1/24 dev n1
    ip -n kato-demo-server addr add 10.71.2.2/24 dev s0
    ip -n kato-demo-client link set c0 up
    ip -n kato-demo-nat link set n0 up
    ip -n kato-demo-nat link set n1 up
    ip -n kato-demo-server link set s0 up
    ip -n kato-demo-client route add default via 10.71.1.1
    in_ns kato-demo-nat sysctl -qw net.ipv4.ip_forward=1
    in_ns kato-demo-nat nft 'add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post oifname n1 masquerade; add table inet filter; add chain inet filter forwarding { type filter hook forward priority 0; }; add rule inet filter forwarding ct state invalid meta l4proto tcp reject with tcp reset'
    # Once the rules have loaded conntrack: no pick-up of forgotten flows.
    in_ns kato-demo-nat sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
    in_ns kato-demo-nat sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=3
}

# An echo server on 10.71.2.2:8000 in kato-demo-server, in the background.
echo_server() {
    py kato-demo-server '
import socket, threading
l = socket.create_server(("10.71.2.2", 8000))
def echo(c):
    while (b := c.recv(64)):
        c.sendall(b)
while True:
    threading.Thread(target=echo, args=(l.accept()[0],), daemon=True).start()
' &
    wait_until $! in_ns kato-demo-server sh -c "ss -Hltn 'sport = 8000' | grep -q ."
}
