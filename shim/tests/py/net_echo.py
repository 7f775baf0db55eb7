"""Loopback TCP (IPv4 and IPv6) and UDP echo, HTTP through urllib and curl, under the shim.

Run by tests/passthrough.rs with LD_PRELOAD=libgcb.so; exits non-zero on any mismatch,
and on anything missing (curl, the IPv6 loopback): no part of it is skipped.
"""
import http.server
import os
import shutil
import socket
import subprocess
import threading


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def start(target, *args):
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def tcp_echo(family, host):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(8)
    srv.settimeout(20)

    def serve():
        conn, _ = srv.accept()  # accept4 with SOCK_CLOEXEC in CPython
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    server = start(serve)
    payload = os.urandom(1 << 20)
    c = socket.create_connection(srv.getsockname()[:2], timeout=20)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    check(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, "TCP_NODELAY")
    check(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, "SO_ERROR")
    check(c.getpeername()[:2] == srv.getsockname()[:2], "getpeername")
    check(c.getsockname()[0] == srv.getsockname()[0], "getsockname")
    # Send from a thread: the echo comes back while we are still sending.
    sender = start(c.sendall, payload)
    got = bytearray()
    buf = bytearray(70000)
    while len(got) < len(payload):
        n = c.recv_into(buf)
        check(n > 0, "early EOF")
        got += buf[:n]
    sender.join(20)
    c.shutdown(socket.SHUT_WR)
    check(c.recv(10) == b"", "EOF after shutdown")
    c.close()
    server.join(20)
    srv.close()
    check(bytes(got) == payload, "tcp echo bytes differ")
    print(f"ok tcp echo {family.name} {len(payload)} bytes")


def udp_echo():
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(20)

    def serve():
        for _ in range(3):
            data, peer = srv.recvfrom(65536)
            srv.sendto(data, peer)

    server = start(serve)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(20)
    msg = os.urandom(1200)
    c.sendto(msg, srv.getsockname())
    data, peer = c.recvfrom(65536)
    check(data == msg and peer == srv.getsockname(), "udp recvfrom")
    c.sendmsg([b"gather", b"-", b"write"], [], 0, srv.getsockname())
    data, _, _, peer = c.recvmsg(100)
    check(data == b"gather-write", f"udp recvmsg got {data!r}")
    c.connect(srv.getsockname())
    c.send(b"connected")
    buf = bytearray(64)
    n, peer = c.recvfrom_into(buf)
    check(bytes(buf[:n]) == b"connected", "udp recvfrom_into")
    server.join(20)
    c.close()
    srv.close()
    print("ok udp echo")


def http_fetch():
    import urllib.request

    body = b"hello through libgcb\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    start(httpd.serve_forever)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/x"
    with urllib.request.urlopen(url, timeout=20) as r:
        check(r.read() == body, "urllib body")
    print("ok urllib")
    curl = shutil.which("curl")
    check(curl is not None, "curl is needed (a test package .ci/run installs)")
    out = subprocess.run([curl, "-sS", "--max-time", "20", url], capture_output=True, timeout=30)
    check(out.returncode == 0 and out.stdout == body, f"curl: {out}")
    print("ok curl fetch")
    httpd.shutdown()
    httpd.server_close()


tcp_echo(socket.AF_INET, "127.0.0.1")
# A machine without the IPv6 loopback fails here, with the kernel's reason.
tcp_echo(socket.AF_INET6, "::1")
udp_echo()
http_fetch()
print("done")
