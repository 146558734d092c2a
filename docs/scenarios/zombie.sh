#!/bin/sh
# Zombies: the NAT of nat-kill.sh forgets idle flows after 3 s; of two
# connections, one idle and one with keepalive every second, the idle one
# is forgotten by the router while both of its ends stay ESTABLISHED. The
# agent finds the router's conntrack by itself and says which is which.
# Run as root: sudo sh zombie.sh
. "$(dirname "$0")/lib.sh"
nat_topology
echo_server
py kato-demo-client '
import socket, time
idle = socket.create_connection(("10.71.2.2", 8000))
kept = socket.create_connection(("10.71.2.2", 8000))
kept.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
kept.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
kept.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
for c in (idle, kept):
    c.sendall(b"hello"); c.recv(64)
time.sleep(600)
' &
WATCH="--netns kato-demo-client --netns kato-demo-nat --netns kato-demo-server"
printf '$ kato agent --listen 127.0.0.1:7999 --snapshot-interval 1s %s &\n' "$WATCH"
"$KATO" agent --listen 127.0.0.1:7999 --snapshot-interval 1s $WATCH 2>/dev/null &
HOST_PIDS="$HOST_PIDS $!"
sleep 10
printf '%s\n' '$ curl -s "http://127.0.0.1:7999/sockets?state=established&port=8000"  (side, ends, keepalive, risk, rule of each)'
python3 -c '
import json, urllib.request
rows = json.load(urllib.request.urlopen("http://127.0.0.1:7999/sockets?state=established&port=8000"))
for r in sorted(rows, key=lambda r: (r["side"] or "", r["risk"] or "")):
    ka = "keepalive on" if r["keepalive"]["enabled"] else "keepalive off"
    print(r["side"], r["local"], "->", r["remote"], ka, r["risk"], r["idle_timeout"])
'
