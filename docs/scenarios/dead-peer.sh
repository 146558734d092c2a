#!/bin/sh
# A dead peer, found by keepalive: a client with TCP_KEEPIDLE=1,
# TCP_KEEPINTVL=1, TCP_KEEPCNT=3 whose peer stops answering after three
# seconds (its packets dropped). Run as root: sudo sh dead-peer.sh
. "$(dirname "$0")/lib.sh"
netns kato-demo-dead
trace_start --netns kato-demo-dead
py kato-demo-dead '
import socket, time
l = socket.create_server(("127.0.0.1", 9099))
c = socket.create_connection(("127.0.0.1", 9099))
s, _ = l.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
for opt, v in ((socket.TCP_KEEPIDLE, 1), (socket.TCP_KEEPINTVL, 1), (socket.TCP_KEEPCNT, 3)):
    c.setsockopt(socket.IPPROTO_TCP, opt, v)
time.sleep(3.5)
import subprocess
# The peer vanishes: everything it sends is dropped from now on.
subprocess.run(["nft", "add table ip demo; add chain ip demo in { type filter hook input priority 0; }; add rule ip demo in tcp sport 9099 drop"], check=True)
try:
    c.recv(1)
except OSError as e:
    print("client:", e, flush=True)
time.sleep(0.2)
'
trace_stop
