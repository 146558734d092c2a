#!/bin/sh
# The HTTP keep-alive race, written out slowly: a server that closes idle
# keep-alive connections after 1 s (`Keep-Alive: timeout=1`) and a client
# that reuses its connection after 1.5 s, writing into a connection the
# server already closed. Run as root: sudo sh keepalive-race.sh
. "$(dirname "$0")/lib.sh"
netns kato-demo-race
trace_start --netns kato-demo-race --closes
py kato-demo-race '
import socket, threading, time
l = socket.create_server(("127.0.0.1", 8080))
def serve():
    s, _ = l.accept()
    s.settimeout(1)
    try:
        while s.recv(1024):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=1\r\n\r\nok")
    except socket.timeout:
        pass
    s.close()
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(("127.0.0.1", 8080))
c.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
c.recv(1024)
time.sleep(1.5)
try:
    c.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
    time.sleep(0.1)
    c.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
except OSError as e:
    print("client:", e, flush=True)
time.sleep(0.2)
'
trace_stop
