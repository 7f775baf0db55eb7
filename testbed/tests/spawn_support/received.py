"""Servers whose listener was received rather than made, for
testbed/tests/received_listeners.rs; run unmodified under the shim. Plain
sockets and the standard library only.

  received.py parent PORT HOW
      Listens on 0.0.0.0:PORT, prints 'NAME tcp ADDR' (getsockname), starts a
      child and hands it the listener over an AF_UNIX socket with SCM_RIGHTS:
        sendfds  a subprocess given one end of a socketpair; the listener
                 goes over it with socket.send_fds;
        mp-pipe  a multiprocessing child (spawn context), already running,
                 gets it through a multiprocessing Pipe: pickling a socket
                 makes multiprocessing's resource sharer pass it over an
                 AF_UNIX connection with SCM_RIGHTS (how a pool hands sockets
                 to workers it already has).
      The child prints 'CHILD PID NAME ADDR' (its own getsockname) and then
      serves: an echo per connection, 'SERVED PID' after each. Only the child
      accepts. Once the child has the listener, the parent closes its own
      copy, prints 'PARENT CLOSED' and waits for the child.

  received.py activated
      A service started by systemd-socket-activate: checks LISTEN_PID and
      LISTEN_FDS=1, takes fd 3, prints 'NAME tcp ADDR' and serves the same
      way.

Children exit when their parent dies (getppid changes), so a failed test
leaves nothing running.
"""
import multiprocessing
import os
import socket
import subprocess
import sys

from serving import name, say, serve, tcp_listener


def child_sendfds(fd, parent):
    link = socket.socket(fileno=fd)
    _, fds, _, _ = socket.recv_fds(link, 16, 1)
    if len(fds) != 1:
        sys.exit(f"child: got {len(fds)} fds")
    ls = socket.socket(fileno=fds[0])
    say("CHILD", os.getpid(), "NAME", name(ls))
    link.sendall(b"ok")
    serve(ls, alive=lambda: os.getppid() == parent)


def child_mp(conn, parent):
    ls = conn.recv()
    say("CHILD", os.getpid(), "NAME", name(ls))
    conn.send("ok")
    serve(ls, alive=lambda: os.getppid() == parent)


def parent(port, how):
    ls = tcp_listener(port)
    say("NAME tcp", name(ls))
    me = os.getpid()
    if how == "sendfds":
        mine, theirs = socket.socketpair()
        child = subprocess.Popen([sys.executable, "-u", __file__, "child-sendfds", str(theirs.fileno()), str(me)],
                                 pass_fds=[theirs.fileno()])
        theirs.close()
        socket.send_fds(mine, [b"listener"], [ls.fileno()])
        mine.settimeout(60)
        if mine.recv(2) != b"ok":
            sys.exit("parent: the child did not take the listener")
        ls.close()
        say("PARENT CLOSED")
        child.wait()
    elif how == "mp-pipe":
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=child_mp, args=(theirs, me))
        child.start()
        mine.send(ls)
        if not mine.poll(60) or mine.recv() != "ok":
            sys.exit("parent: the child did not take the listener")
        ls.close()
        say("PARENT CLOSED")
        child.join()
    else:
        sys.exit(f"unknown way {how}")


def activated():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit(f"not socket-activated: LISTEN_PID={os.environ.get('LISTEN_PID')} "
                 f"LISTEN_FDS={os.environ.get('LISTEN_FDS')} pid={os.getpid()}")
    ls = socket.socket(fileno=3)
    say("NAME tcp", name(ls))
    serve(ls)


if __name__ == "__main__":
    if sys.argv[1] == "parent":
        parent(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "child-sendfds":
        child_sendfds(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "activated":
        activated()
    else:
        sys.exit(f"usage: see {sys.argv[0]}'s docstring")
