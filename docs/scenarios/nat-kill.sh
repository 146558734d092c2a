#!/bin/sh
# A NAT forgets an idle flow: the client's connection through a router
# that forgets established flows after 3 s sits idle for 5 s, then the
# client writes and the router answers with a reset. kato names it an idle
# kill, with the silence and the rule. Run as root: sudo sh nat-kill.sh
. "$(dirname "$0")/lib.sh"
nat_topology
echo_server
trace_start --netns kato-demo-client --idle-timeout 10.71.2.2:8000=3s
py kato-demo-client '
import socket, time
c = socket.create_connection(("10.71.2.2", 8000))
c.sendall(b"hello"); c.recv(64)
time.sleep(5)
try:
    c.sendall(b"again"); c.recv(64)
except OSError as e:
    print("client:", e, flush=True)
time.sleep(0.2)
'
trace_stop
