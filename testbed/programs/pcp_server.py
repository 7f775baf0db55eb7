"""An unmodified Python echo server for the DPF tests through a standard
gateway (issue 14): it knows nothing of the shim, NAT or port mapping.

    pcp_server.py PORT [--bind IP] [--fork]

Binds a TCP listener and a UDP socket to IP:PORT (default 0.0.0.0) and
prints, flushed, what getsockname() says of each:

    LISTEN tcp IP:PORT
    LISTEN udp IP:PORT

or, if the bind fails, `BIND_ERROR <errno name>`, then binds both to
0.0.0.0:0 and prints the LISTEN lines for those. It echoes every TCP
connection (in a thread each) and every datagram until its stdin closes,
then closes its sockets, prints EXIT and exits 0.

With --fork, a child process takes over the serving: the parent prints
`FORKED <pid>`, closes its own sockets, and waits for the child, which
serves until stdin closes (the parent's and the child's stdin are one).
"""

import errno
import os
import socket
import sys
import threading


def bind_both(ip, port):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        tcp.bind((ip, port))
        udp.bind((ip, tcp.getsockname()[1] if port == 0 else port))
    except OSError as e:
        print("BIND_ERROR", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        for s in (tcp, udp):
            s.close()
        return bind_both("0.0.0.0", 0)
    tcp.listen(16)
    print("LISTEN tcp %s:%d" % tcp.getsockname(), flush=True)
    print("LISTEN udp %s:%d" % udp.getsockname(), flush=True)
    return tcp, udp


def echo_tcp(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def serve(tcp, udp):
    def accept_loop():
        while True:
            try:
                conn, _ = tcp.accept()
            except OSError:
                return
            threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()

    def udp_loop():
        while True:
            try:
                data, peer = udp.recvfrom(65536)
                udp.sendto(data, peer)
            except OSError:
                return

    for f in (accept_loop, udp_loop):
        threading.Thread(target=f, daemon=True).start()
    sys.stdin.read()
    for s in (tcp, udp):
        # shutdown wakes the threads blocked in accept/recvfrom.
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
    print("EXIT", flush=True)


def main():
    args = sys.argv[1:]
    port = int(args[0])
    ip = args[args.index("--bind") + 1] if "--bind" in args else "0.0.0.0"
    tcp, udp = bind_both(ip, port)
    if "--fork" not in args:
        serve(tcp, udp)
        return
    pid = os.fork()
    if pid == 0:
        serve(tcp, udp)
        return
    print("FORKED", pid, flush=True)
    tcp.close()
    udp.close()
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
