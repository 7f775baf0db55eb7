/* client-tcp.c - one measured TCP run of echo-client: connect (blocking or
 * non-blocking), M rounds of N bytes echoed and verified, then half-close
 * and wait for the server's EOF. */
#define _GNU_SOURCE
#include "client.h"
#include "common.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* At most this much is sent ahead of what came back. Writing a whole large
 * round before reading could deadlock once every buffer between us and the
 * server is full; this bound stays below a single receive buffer. */
#define WINDOW 65536

/* The pattern for the part of a round about to be sent, regenerated only
 * when the send position leaves it, so retries after EAGAIN cost nothing. */
struct outbuf {
	unsigned char b[IO_BUF];
	uint64_t off;
	size_t len;
};

static const unsigned char *out_at(struct outbuf *o, long run, long round,
				   uint64_t pos, uint64_t total, size_t *avail)
{
	if (o->len == 0 || pos < o->off || pos >= o->off + o->len) {
		uint64_t left = total - pos;
		size_t k = left < sizeof o->b ? (size_t)left : sizeof o->b;

		pat_fill(o->b, run, round, pos, k);
		o->off = pos;
		o->len = k;
	}
	*avail = (size_t)(o->off + o->len - pos);
	return o->b + (pos - o->off);
}

/* Bytes to ask for in one read: what the round still owes, at most
 * g_io_size (which never exceeds IO_BUF, the size of every receive buffer
 * here). */
static size_t read_len(uint64_t owed)
{
	return owed < g_io_size ? (size_t)owed : g_io_size;
}

static void io_error(long run, long round, const char *op, int err)
{
	say("IO-ERROR run=%ld round=%ld %s: %s: %s", run, round, op,
	    errno_name(err), strerror(err));
}

static void timeout_line(long run, long round)
{
	say("TIMEOUT run=%ld round=%ld waiting for echo", run, round);
}

static int tcp_connect(const struct cli_cfg *c, int fd)
{
	int err = 0;
	socklen_t sl = sizeof err;
	int w;

	if (connect(fd, (const struct sockaddr *)&c->dst, sizeof c->dst) == 0)
		return 0;
	/* A blocking connect that ran into SO_SNDTIMEO says EINPROGRESS. */
	if (errno == EINPROGRESS && !c->nonblock) {
		errno = ETIMEDOUT;
		return -1;
	}
	/* After EINTR the handshake carries on in the kernel; from here on it
	 * is the same wait as for a non-blocking connect. */
	if (errno != EINPROGRESS && errno != EINTR)
		return -1;
	w = wait_fd(fd, POLLOUT, c->timeout_ms);
	if (w <= 0) {
		if (w == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* Blocking data phase: send while the window allows, otherwise block in
 * recv, which SO_RCVTIMEO bounds. */
static int round_blocking(const struct cli_cfg *c, int fd, long run,
			  long round)
{
	struct outbuf out;
	unsigned char in[IO_BUF];
	uint64_t n = c->bytes, sent = 0, got = 0;

	out.len = 0;
	while (got < n) {
		ssize_t r;

		if (sent < n && sent - got < WINDOW) {
			size_t avail, room = (size_t)(WINDOW - (sent - got));
			const unsigned char *p =
				out_at(&out, run, round, sent, n, &avail);

			r = send(fd, p, avail < room ? avail : room, MSG_NOSIGNAL);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					timeout_line(run, round);
				else
					io_error(run, round, "send", errno);
				return -1;
			}
			sent += (uint64_t)r;
			continue;
		}
		r = recv(fd, in, read_len(n - got), 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				timeout_line(run, round);
			else
				io_error(run, round, "recv", errno);
			return -1;
		}
		if (r == 0) {
			say("EARLY-EOF run=%ld round=%ld offset=%llu", run, round,
			    (unsigned long long)got);
			return -1;
		}
		if (pat_check(in, (size_t)r, run, round, got) < 0)
			return -1;
		got += (uint64_t)r;
	}
	return 0;
}

/* Non-blocking data phase: try both directions, and only when neither moved
 * sleep in poll for whatever the round still needs. */
static int round_nonblock(const struct cli_cfg *c, int fd, long run,
			  long round)
{
	struct outbuf out;
	unsigned char in[IO_BUF];
	uint64_t n = c->bytes, sent = 0, got = 0;

	out.len = 0;
	while (got < n) {
		int progress = 0, can_send = sent < n && sent - got < WINDOW;
		ssize_t r;

		if (can_send) {
			size_t avail, room = (size_t)(WINDOW - (sent - got));
			const unsigned char *p =
				out_at(&out, run, round, sent, n, &avail);

			r = send(fd, p, avail < room ? avail : room, MSG_NOSIGNAL);
			if (r > 0) {
				sent += (uint64_t)r;
				progress = 1;
			} else if (r < 0 && errno != EAGAIN &&
				   errno != EWOULDBLOCK && errno != EINTR) {
				io_error(run, round, "send", errno);
				return -1;
			}
		}
		r = read(fd, in, read_len(n - got));
		if (r > 0) {
			if (pat_check(in, (size_t)r, run, round, got) < 0)
				return -1;
			got += (uint64_t)r;
			progress = 1;
		} else if (r == 0) {
			say("EARLY-EOF run=%ld round=%ld offset=%llu", run, round,
			    (unsigned long long)got);
			return -1;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK &&
			   errno != EINTR) {
			io_error(run, round, "read", errno);
			return -1;
		}
		if (!progress) {
			short ev = POLLIN;
			int w;

			if (sent < n && sent - got < WINDOW)
				ev |= POLLOUT;
			w = wait_fd(fd, ev, c->timeout_ms);
			if (w == 0) {
				timeout_line(run, round);
				return -1;
			}
			if (w < 0) {
				io_error(run, round, "poll", errno);
				return -1;
			}
		}
	}
	return 0;
}

/* After our half-close the server must finish with a clean EOF and nothing
 * beyond what was echoed. */
static int expect_eof(const struct cli_cfg *c, int fd, long run)
{
	unsigned char in[256];

	for (;;) {
		ssize_t r;

		if (c->nonblock) {
			int w = wait_fd(fd, POLLIN, c->timeout_ms);

			if (w == 0) {
				say("TIMEOUT run=%ld waiting for EOF", run);
				return -1;
			}
		}
		r = recv(fd, in, sizeof in, 0);
		if (r == 0)
			return 0;
		if (r > 0) {
			say("TRAILING run=%ld bytes=%zd after the last round", run,
			    r);
			return -1;
		}
		if (errno == EINTR || (c->nonblock && errno == EAGAIN))
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			say("TIMEOUT run=%ld waiting for EOF", run);
		else
			io_error(run, c->rounds, "recv-eof", errno);
		return -1;
	}
}

void tcp_run(const struct cli_cfg *c, long run, int first,
	     struct run_result *res)
{
	uint64_t t0, t1, td, t2;
	long round;
	int fd, ok;

	memset(res, 0, sizeof *res);
	t0 = now_us();
	fd = cli_socket(c, SOCK_STREAM);
	if (fd < 0) {
		connect_failed(errno, "socket");
		res->code = EXIT_CONNECT;
		res->abort = 1;
		return;
	}
	if (!c->nonblock) {
		/* The blocking way to bound connect and every recv. */
		struct timeval tv = {.tv_sec = c->timeout_ms / 1000,
				     .tv_usec = (c->timeout_ms % 1000) * 1000};

		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	}
	if (tcp_connect(c, fd) < 0) {
		connect_failed(errno, "connect");
		close(fd);
		res->code = EXIT_CONNECT;
		res->abort = 1;
		return;
	}
	t1 = now_us();
	if (first) {
		print_endpoints(fd);
		/* The data phase is timed without that line's output. */
		td = now_us();
	} else {
		td = t1;
	}
	for (round = 0; round < c->rounds; round++) {
		int rc = c->nonblock ? round_nonblock(c, fd, run, round)
				     : round_blocking(c, fd, run, round);

		if (rc < 0) {
			close(fd);
			res->code = EXIT_DATA;
			res->abort = 1;
			return;
		}
	}
	t2 = now_us();
	if (shutdown(fd, SHUT_WR) < 0) {
		io_error(run, c->rounds, "shutdown", errno);
		ok = 0;
	} else {
		ok = expect_eof(c, fd, run) == 0;
	}
	close(fd);
	if (!ok) {
		res->code = EXIT_DATA;
		res->abort = 1;
		return;
	}
	res->measured = res->ok = 1;
	res->conn_us = t1 - t0;
	res->data_us = t2 - td;
	res->bytes = c->bytes * (uint64_t)c->rounds;
}
