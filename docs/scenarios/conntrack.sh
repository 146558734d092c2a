#!/bin/sh
# Conntrack, the middlebox on this host: a namespace that tracks its flows
# (a `ct state` rule) and forgets an established one after 20 s without a
# packet. Two clients: keepalive 60 s/10 s (too slow) and 5 s/5 s (fast
# enough); the server's ends have keepalive off. Run as root: sudo sh conntrack.sh
. "$(dirname "$0")/lib.sh"
netns kato-demo-ct
in_ns kato-demo-ct nft 'add table inet f; add chain inet f in { type filter hook input priority 0; }; add rule inet f in ct state established,related accept'
in_ns kato-demo-ct sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=20
py kato-demo-ct '
import socket, time
l = socket.create_server(("127.0.0.1", 5432))
held = []
for idle, intvl in ((60, 10), (5, 5)):
    c = socket.create_connection(("127.0.0.1", 5432))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
    held += [c, l.accept()[0]]
time.sleep(600)
' &
wait_until $! in_ns kato-demo-ct sh -c "ss -Htn state established | grep -q 5432"
sleep 2
show sockets --netns kato-demo-ct --state established --sort timer
