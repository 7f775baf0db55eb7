#!/usr/bin/env bash
# selftest.sh - checks echo-server and echo-client against each other on
# 127.0.0.1, without the shim: every server mode for TCP and UDP, --fork,
# --prefork 3 and --exec, blocking/non-blocking/parallel clients, limits,
# usage and connect errors, epoll-connects (the event-loop client) and
# nb-connect (the bench's timed non-blocking connects).
# Prints "N passed, M failed"; exits 1 on any failure. Run it after
# `make -C c-tests`.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
B=$HERE/build
SRV=$B/echo-server
SRVF=$B/echo-server-fortify
CLI=$B/echo-client
CLIF=$B/echo-client-fortify
EPC=$B/epoll-connects
NBC=$B/nb-connect
MODES="blocking select poll epoll epoll-et nonblock"

for f in "$SRV" "$SRVF" "$CLI" "$CLIF" "$EPC" "$NBC"; do
	if [ ! -x "$f" ]; then
		echo "missing $f; run make -C $HERE first" >&2
		exit 2
	fi
done

TMP=$(mktemp -d)
SERVERS=()
pass=0
fail=0
nsrv=0

# Each server gets its own session and process group (setsid), so whatever
# it forked can still be found and killed if a test goes wrong.
cleanup() {
	local p
	for p in "${SERVERS[@]}"; do
		kill -KILL -- "-$p" 2>/dev/null
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

ok() {
	pass=$((pass + 1))
}

bad() { # name [file to show]
	fail=$((fail + 1))
	echo "FAIL: $1"
	if [ $# -gt 1 ] && [ -f "$2" ]; then
		tail -n 15 "$2" | sed 's/^/    /'
	fi
}

group_alive() { # pgid -> live (non-zombie) members, one pid a line
	ps -e -o pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'
}

# start_server WANT CMD... : WANT lists the lines to wait for (tcp, udp,
# itcp, iudp for INHERITED). Sets SRV_PID, SRV_OUT, PORT.
start_server() {
	local want=$1 w i ready
	shift
	nsrv=$((nsrv + 1))
	SRV_OUT=$TMP/srv.$nsrv.out
	setsid "$@" >"$SRV_OUT" 2>"$SRV_OUT.err" &
	SRV_PID=$!
	SERVERS+=("$SRV_PID")
	PORT=
	for i in $(seq 200); do
		ready=1
		for w in $want; do
			case $w in
			tcp) grep -qs '^LISTEN tcp ' "$SRV_OUT" || ready=0 ;;
			udp) grep -qs '^LISTEN udp ' "$SRV_OUT" || ready=0 ;;
			itcp) grep -qs '^INHERITED tcp ' "$SRV_OUT" || ready=0 ;;
			iudp) grep -qs '^INHERITED udp ' "$SRV_OUT" || ready=0 ;;
			esac
		done
		[ $ready = 1 ] && break
		kill -0 "$SRV_PID" 2>/dev/null || break
		sleep 0.025
	done
	PORT=$(sed -n 's/^LISTEN [a-z]* .*:\([0-9]*\)$/\1/p' "$SRV_OUT" | head -n 1)
	if [ $ready != 1 ] || [ -z "$PORT" ]; then
		bad "start: $*" "$SRV_OUT.err"
		return 1
	fi
	return 0
}

# Waits up to 5 s for a pid to finish; returns its exit status, or 255 after
# killing its group when it would not go.
reap() {
	local pid=$1 i st
	for i in $(seq 100); do
		st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
		[ -z "$st" ] || [ "$st" = Z ] && break
		sleep 0.05
	done
	if [ -n "$st" ] && [ "$st" != Z ]; then
		kill -KILL -- "-$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		return 255
	fi
	wait "$pid"
}

# The server must leave on SIGTERM with status 0 and take everything it
# forked with it (prefork and exec children; --fork children are idle).
stop_server() { # name
	local rc i left
	kill -TERM "$SRV_PID"
	reap "$SRV_PID"
	rc=$?
	for i in $(seq 40); do
		left=$(group_alive "$SRV_PID")
		[ -z "$left" ] && break
		sleep 0.05
	done
	if [ $rc -eq 0 ] && [ -z "$left" ]; then
		ok
	else
		echo "exit=$rc leftover=[$left]" >>"$SRV_OUT.err"
		bad "stop $1" "$SRV_OUT.err"
		kill -KILL -- "-$SRV_PID" 2>/dev/null
	fi
}

# client NAME BIN ARGS... : must exit 0 with a complete SUMMARY.
client() {
	local name=$1 bin=$2 out=$TMP/client.out rc
	shift 2
	timeout 20 "$bin" "$@" >"$out" 2>&1
	rc=$?
	if [ $rc -eq 0 ] && grep -q '^SUMMARY ' "$out" &&
		! grep -qE '^(MISMATCH|TIMEOUT|CONNECT-FAILED|LOSS|IO-ERROR)' "$out"; then
		ok
	else
		echo "exit=$rc" >>"$out"
		bad "$name: $*" "$out"
	fi
}

tcp_clients() { # label port
	local l=$1 a=127.0.0.1:$2
	client "$l" "$CLI" --connect "$a" --bytes 1 --rounds 5 --runs 3 --bind 127.0.0.1
	client "$l" "$CLI" --connect "$a" --bytes 1000 --rounds 3 --runs 3 --nonblock
	client "$l" "$CLI" --connect "$a" --bytes 100000 --rounds 2 --runs 2
	client "$l" "$CLIF" --connect "$a" --bytes 100000 --rounds 2 --runs 2 --nonblock
	client "$l" "$CLI" --connect "$a" --bytes 1000 --runs 3 --parallel 8
	client "$l" "$CLIF" --connect "$a" --bytes 100000 --runs 2 --parallel 8 --nonblock
}

# UDP with 60000-byte datagrams stays single-threaded: eight of them at
# once overflow a default receive buffer, and loss would fail the test.
udp_clients() { # label port
	local l=$1 a=127.0.0.1:$2
	client "$l" "$CLI" --proto udp --connect "$a" --bytes 1000 --rounds 5 --runs 3 --bind 127.0.0.1
	client "$l" "$CLIF" --proto udp --connect "$a" --bytes 60000 --rounds 3 --runs 2
	client "$l" "$CLI" --proto udp --connect "$a" --bytes 60000 --rounds 3 --runs 2 --udp-connected
	client "$l" "$CLIF" --proto udp --connect "$a" --bytes 1000 --rounds 3 --runs 2 --nonblock --udp-connected
	client "$l" "$CLI" --proto udp --connect "$a" --bytes 12 --rounds 5 --runs 3 --parallel 8
	client "$l" "$CLI" --proto udp --connect "$a" --bytes 1000 --rounds 3 --runs 2 --parallel 8 --nonblock
}

# The server's ACCEPT PEER line must name the client's own address.
check_peer() { # label port
	local out=$TMP/peer.out local_addr i
	timeout 20 "$CLI" --connect "127.0.0.1:$2" --bytes 10 >"$out" 2>&1
	local_addr=$(sed -n 's/^LOCAL \([^ ]*\) PEER .*/\1/p' "$out")
	for i in $(seq 40); do
		grep -qx "ACCEPT PEER $local_addr" "$SRV_OUT" && break
		sleep 0.025
	done
	if [ -n "$local_addr" ] && grep -q "PEER 127.0.0.1:$2\$" "$out" &&
		grep -qx "ACCEPT PEER $local_addr" "$SRV_OUT"; then
		ok
	else
		bad "$1: ACCEPT PEER for '$local_addr'" "$SRV_OUT"
	fi
}

expect_exit() { # name want cmd...
	local name=$1 want=$2 rc
	shift 2
	timeout 20 "$@" >"$TMP/x.out" 2>&1
	rc=$?
	if [ $rc -eq "$want" ]; then
		ok
	else
		echo "exit=$rc, want $want" >>"$TMP/x.out"
		bad "$name" "$TMP/x.out"
	fi
}

start=$(date +%s)

for m in $MODES; do
	if start_server tcp "$SRV" --proto tcp --mode "$m"; then
		tcp_clients "tcp/$m" "$PORT"
		check_peer "tcp/$m" "$PORT"
		stop_server "tcp/$m"
	fi
	if start_server udp "$SRV" --proto udp --mode "$m"; then
		udp_clients "udp/$m" "$PORT"
		stop_server "udp/$m"
	fi
	if start_server "tcp udp" "$SRVF" --proto both --mode "$m"; then
		a=127.0.0.1:$PORT
		client "both/$m" "$CLIF" --connect "$a" --bytes 100000 --runs 3 --parallel 4
		client "both/$m" "$CLIF" --proto udp --connect "$a" --bytes 60000 --rounds 3 --runs 2
		client "both/$m" "$CLIF" --proto udp --connect "$a" --bytes 500 --runs 2 --parallel 8 --udp-connected
		stop_server "both/$m"
	fi
	if start_server "tcp udp" "$SRV" --proto both --mode "$m" --fork; then
		a=127.0.0.1:$PORT
		client "fork/$m" "$CLI" --connect "$a" --bytes 100000 --rounds 2 --runs 3
		client "fork/$m" "$CLI" --connect "$a" --bytes 1000 --runs 3 --parallel 8 --nonblock
		client "fork/$m" "$CLI" --proto udp --connect "$a" --bytes 1000 --rounds 3 --runs 2 --parallel 4
		check_peer "fork/$m" "$PORT"
		stop_server "fork/$m"
	fi
	if start_server tcp "$SRV" --mode "$m" --prefork 3; then
		a=127.0.0.1:$PORT
		client "prefork/$m" "$CLI" --connect "$a" --bytes 100000 --rounds 2 --runs 3
		client "prefork/$m" "$CLI" --connect "$a" --bytes 1000 --runs 3 --parallel 8
		check_peer "prefork/$m" "$PORT"
		stop_server "prefork/$m"
	fi
	if start_server "tcp udp itcp iudp" "$SRVF" --proto both --mode "$m" --exec; then
		a=127.0.0.1:$PORT
		if grep -qs "^INHERITED tcp .*:$PORT\$" "$SRV_OUT" &&
			grep -qs "^INHERITED udp .*:$PORT\$" "$SRV_OUT"; then
			ok
		else
			bad "exec/$m: INHERITED lines" "$SRV_OUT"
		fi
		client "exec/$m" "$CLI" --connect "$a" --bytes 100000 --rounds 2 --runs 2 --nonblock
		client "exec/$m" "$CLI" --connect "$a" --bytes 1000 --runs 2 --parallel 8
		client "exec/$m" "$CLI" --proto udp --connect "$a" --bytes 60000 --rounds 2 --udp-connected
		check_peer "exec/$m" "$PORT"
		stop_server "exec/$m"
	fi
	# Limits: the server must leave by itself, with status 0.
	if start_server "tcp udp" "$SRV" --proto both --mode "$m" --max-conns 4 --max-datagrams 4; then
		a=127.0.0.1:$PORT
		client "limits/$m" "$CLI" --connect "$a" --runs 4 --bytes 5000
		client "limits/$m" "$CLI" --proto udp --connect "$a" --rounds 3
		if reap "$SRV_PID"; then ok; else bad "limits/$m: server did not exit 0" "$SRV_OUT.err"; fi
	fi
	# Only the TCP limit is given, so UDP must not keep the server up.
	if start_server "tcp udp" "$SRV" --proto both --mode "$m" --fork --max-conns 3; then
		client "fork-limit/$m" "$CLI" --connect "127.0.0.1:$PORT" --runs 3 --bytes 5000
		if reap "$SRV_PID"; then ok; else bad "fork-limit/$m: server did not exit 0" "$SRV_OUT.err"; fi
	fi
done

# Small reads on the server side exercise partial reads and writes.
if start_server tcp "$SRV" --mode epoll-et --io-size 7; then
	client "io-size" "$CLI" --connect "127.0.0.1:$PORT" --bytes 100000 --rounds 2 --nonblock
	stop_server "io-size"
fi

# Error paths. A port whose server just left stands in for a closed port.
if start_server "tcp udp" "$SRV" --proto both; then
	closed=$PORT
	stop_server "closed-port server"
	expect_exit "refused tcp" 3 "$CLI" --connect "127.0.0.1:$closed"
	grep -q '^CONNECT-FAILED ECONNREFUSED' "$TMP/x.out" && ok || bad "refused tcp line" "$TMP/x.out"
	expect_exit "refused tcp nonblock" 3 "$CLI" --connect "127.0.0.1:$closed" --nonblock
	expect_exit "refused udp connected" 3 "$CLI" --proto udp --connect "127.0.0.1:$closed" --udp-connected
	expect_exit "lost udp probe" 3 "$CLI" --proto udp --connect "127.0.0.1:$closed" --timeout-ms 300
	grep -q '^SUMMARY .* lost=1 ' "$TMP/x.out" && ok || bad "lost udp probe counted" "$TMP/x.out"
	# The event-loop client: 100 non-blocking connects at once, one refused.
	if start_server tcp "$SRV" --mode epoll; then
		out=$TMP/epc.out
		timeout 20 "$EPC" --target "127.0.0.1:$PORT" --refused "127.0.0.1:$closed" --count 100 >"$out" 2>&1
		if [ $? -eq 0 ] && grep -q '^CALLS n=101 einprogress=101 ' "$out" && grep -q '^ECHO ok=100 bad=0' "$out" &&
			grep -q "^REFUSED addr=127.0.0.1:$closed returned=EINPROGRESS so_error=ECONNREFUSED " "$out"; then
			ok
		else
			bad "epoll-connects" "$out"
		fi
		# The bench's timed connects: one at a time, each echoed.
		out=$TMP/nbc.out
		timeout 20 "$NBC" --connect "127.0.0.1:$PORT" --count 20 --gap-ms 1 >"$out" 2>&1
		if [ $? -eq 0 ] && [ "$(grep -c '^RUN [0-9]* call_ns=[0-9]* est_us=[0-9.]* returned=' "$out")" -eq 20 ] &&
			grep -q '^SUMMARY n=20 ok=20 ' "$out" && grep -q '^DONE ok' "$out"; then
			ok
		else
			bad "nb-connect" "$out"
		fi
		stop_server "epoll-connects server"
		expect_exit "nb-connect refused" 1 "$NBC" --connect "127.0.0.1:$closed" --count 2
		grep -q '^FAILED 1 SO_ERROR: ECONNREFUSED' "$TMP/x.out" && ok || bad "nb-connect refused line" "$TMP/x.out"
	fi
fi
expect_exit "server bad flag" 2 "$SRV" --bogus
expect_exit "server bad mode" 2 "$SRV" --mode spin
expect_exit "client bad flag" 2 "$CLI" --bogus
expect_exit "client no --connect" 2 "$CLI"
expect_exit "client udp too big" 2 "$CLI" --proto udp --connect 127.0.0.1:9 --bytes 65001
expect_exit "server help" 0 "$SRV" --help
expect_exit "client help" 0 "$CLI" --help
expect_exit "epoll-connects no --target" 2 "$EPC"
expect_exit "epoll-connects help" 0 "$EPC" --help
expect_exit "nb-connect no --connect" 2 "$NBC"
expect_exit "nb-connect help" 0 "$NBC" --help

echo "$pass passed, $fail failed ($(( $(date +%s) - start )) s)"
[ "$fail" -eq 0 ]
