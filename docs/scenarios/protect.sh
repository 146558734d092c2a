#!/bin/sh
# kato protect keeps a connection alive through the NAT of nat-kill.sh
# (it forgets flows after 3 s) without touching the client, whose
# keepalive is off: keepalive goes on at 1 s, and the write after 5 s of
# idle gets its echo. Run as root: sudo sh protect.sh
. "$(dirname "$0")/lib.sh"
nat_topology
echo_server
py kato-demo-client '
import socket, time
c = socket.create_connection(("10.71.2.2", 8000))
c.sendall(b"hello"); c.recv(64)
time.sleep(6)
c.sendall(b"again")
print("client: after 6 s idle the echo came back:", c.recv(64).decode(), flush=True)
' &
CLIENT=$!
sleep 0.5
printf '$ kato protect --netns kato-demo-client --idle-timeout 10.71.2.2/32:8000=3s\n'
"$KATO" protect --netns kato-demo-client --idle-timeout 10.71.2.2/32:8000=3s 2>&1 &
PROTECT=$!
HOST_PIDS="$HOST_PIDS $PROTECT"
wait "$CLIENT"
kill -INT "$PROTECT"
wait "$PROTECT" || true
