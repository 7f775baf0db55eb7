/* client-udp.c - one measured UDP run of echo-client: a probe datagram whose
 * echo ends the connection time, then M stop-and-wait datagrams of N bytes.
 * Loss and reordering are counted and reported, never retried away. */
#define _GNU_SOURCE
#include "client.h"
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Every datagram starts with magic, run and sequence number (probe = 0),
 * so a late echo from an earlier datagram is recognised as such. */
#define HDR 12
static const unsigned char magic[4] = {'G', 'C', 'B', 'E'};

enum echo_res { ECHO_OK, ECHO_LOST, ECHO_BAD, ECHO_REFUSED, ECHO_FAILED };

static void put_hdr(unsigned char *p, long run, uint32_t seq)
{
	uint32_t r = htonl((uint32_t)run), s = htonl(seq);

	memcpy(p, magic, 4);
	memcpy(p + 4, &r, 4);
	memcpy(p + 8, &s, 4);
}

static int send_dgram(const struct cli_cfg *c, int fd, const void *buf,
		      size_t len)
{
	for (;;) {
		ssize_t w;

		if (c->udp_connected)
			w = send(fd, buf, len, 0);
		else
			w = sendto(fd, buf, len, 0,
				   (const struct sockaddr *)&c->dst,
				   sizeof c->dst);
		if (w >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
			int r = wait_fd(fd, POLLOUT, c->timeout_ms);

			if (r > 0)
				continue;
			if (r == 0)
				errno = ETIMEDOUT;
		}
		return -1;
	}
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
	return a->sin_family == b->sin_family &&
	       a->sin_addr.s_addr == b->sin_addr.s_addr &&
	       a->sin_port == b->sin_port;
}

/* Waits up to the timeout for the echo of datagram seq. Anything else that
 * arrives meanwhile (an echo we had given up on, a duplicate) counts as
 * reordered and the wait goes on. */
static enum echo_res await_echo(const struct cli_cfg *c, int fd, long run,
				uint32_t seq, size_t len, long *reordered)
{
	uint64_t end = now_us() + (uint64_t)c->timeout_ms * 1000u;
	unsigned char in[IO_BUF];

	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		uint64_t t = now_us();
		uint32_t hrun, hseq;
		ssize_t r;
		int w;

		if (t >= end)
			return ECHO_LOST;
		w = wait_fd(fd, POLLIN, (int)((end - t + 999) / 1000));
		if (w == 0)
			return ECHO_LOST;
		if (w < 0)
			return ECHO_FAILED;
		/* One byte more than expected, so an oversized echo shows
		 * as a wrong length instead of silently truncating. */
		memset(&from, 0, sizeof from);
		if (c->udp_connected)
			r = recv(fd, in, len + 1, 0);
		else
			r = recvfrom(fd, in, len + 1, 0, (struct sockaddr *)&from,
				     &fl);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN ||
			    errno == EWOULDBLOCK)
				continue;
			return errno == ECONNREFUSED ? ECHO_REFUSED : ECHO_FAILED;
		}
		if (!c->udp_connected && !same_addr(&from, &c->dst)) {
			char a[ADDR_STR];

			fmt_addr(&from, a, sizeof a);
			say("MISMATCH-SRC got %s", a);
			return ECHO_BAD;
		}
		if (r < HDR || memcmp(in, magic, sizeof magic) != 0) {
			say("MISMATCH-HEADER run=%ld round=%u len=%zd", run,
			    (unsigned)seq, r);
			return ECHO_BAD;
		}
		memcpy(&hrun, in + 4, 4);
		memcpy(&hseq, in + 8, 4);
		if (ntohl(hrun) != (uint32_t)run || ntohl(hseq) != seq) {
			(*reordered)++;
			continue;
		}
		if ((size_t)r != len) {
			say("MISMATCH-LEN run=%ld round=%u expected=%zu got=%zd",
			    run, (unsigned)seq, len, r);
			return ECHO_BAD;
		}
		if (pat_check(in + HDR, len - HDR, run, (long)seq, HDR) < 0)
			return ECHO_BAD;
		return ECHO_OK;
	}
}

static void fail(struct run_result *res, int fd, int code)
{
	if (fd >= 0)
		close(fd);
	res->code = code;
	res->abort = 1;
}

void udp_run(const struct cli_cfg *c, long run, int first,
	     struct run_result *res)
{
	unsigned char out[IO_BUF];
	size_t n = (size_t)c->bytes;
	uint64_t t0, t1, td, t2;
	enum echo_res e;
	uint32_t seq;
	int fd;

	memset(res, 0, sizeof *res);
	t0 = now_us();
	fd = cli_socket(c, SOCK_DGRAM);
	if (fd < 0) {
		connect_failed(errno, "socket");
		fail(res, -1, EXIT_CONNECT);
		return;
	}
	if (c->udp_connected &&
	    connect(fd, (const struct sockaddr *)&c->dst, sizeof c->dst) < 0) {
		connect_failed(errno, "connect");
		fail(res, fd, EXIT_CONNECT);
		return;
	}
	put_hdr(out, run, 0);
	if (send_dgram(c, fd, out, HDR) < 0) {
		connect_failed(errno, "send probe");
		fail(res, fd, EXIT_CONNECT);
		return;
	}
	e = await_echo(c, fd, run, 0, HDR, &res->reordered);
	if (e != ECHO_OK) {
		/* No second probe: a lost probe is a failed connection. */
		if (e == ECHO_LOST) {
			res->lost = 1;
			connect_failed(ETIMEDOUT, "UDP probe not echoed");
		} else if (e == ECHO_REFUSED) {
			connect_failed(ECONNREFUSED, "UDP probe");
		} else if (e == ECHO_FAILED) {
			connect_failed(errno, "UDP probe");
		}
		fail(res, fd, e == ECHO_BAD ? EXIT_DATA : EXIT_CONNECT);
		return;
	}
	t1 = now_us();
	td = t1;
	if (first && c->udp_connected) {
		print_endpoints(fd);
		td = now_us();
	}
	for (seq = 1; seq <= (uint32_t)c->rounds; seq++) {
		put_hdr(out, run, seq);
		pat_fill(out + HDR, run, (long)seq, HDR, n - HDR);
		if (send_dgram(c, fd, out, n) < 0) {
			say("IO-ERROR run=%ld round=%u send: %s: %s", run,
			    (unsigned)seq, errno_name(errno), strerror(errno));
			fail(res, fd, EXIT_DATA);
			return;
		}
		e = await_echo(c, fd, run, seq, n, &res->reordered);
		if (e == ECHO_LOST) {
			res->lost++;
			continue;
		}
		if (e != ECHO_OK) {
			if (e != ECHO_BAD)
				say("IO-ERROR run=%ld round=%u recv: %s: %s", run,
				    (unsigned)seq,
				    errno_name(e == ECHO_REFUSED ? ECONNREFUSED
								: errno),
				    strerror(e == ECHO_REFUSED ? ECONNREFUSED
							      : errno));
			fail(res, fd, EXIT_DATA);
			return;
		}
		res->bytes += n;
	}
	t2 = now_us();
	close(fd);
	res->measured = 1;
	res->conn_us = t1 - t0;
	res->data_us = t2 - td;
	if (res->lost || res->reordered)
		say("LOSS run=%ld lost=%ld reordered=%ld", run, res->lost,
		    res->reordered);
	if ((res->lost || res->reordered) && !c->allow_loss)
		res->code = EXIT_DATA;
	else
		res->ok = 1;
}
