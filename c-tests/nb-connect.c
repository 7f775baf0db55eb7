/* nb-connect.c - times non-blocking connects one after another, for the
 * bench's nbconnect part (issue 12): how long the thread spends inside the
 * connect() call itself, and how long until the connection is established
 * (writable, then SO_ERROR 0), as an event loop would see it. Each
 * connection then echoes a few bytes, checked, so a number always belongs
 * to a connection that reached the intended server.
 *
 * One connect at a time, so every call and every establishment is measured
 * alone: the bench wants the cost of the call, not of a crowd; --gap-ms
 * paces them below the broker's per-source-IP command rate limit (200/s by
 * default), whose dropped requests would otherwise be measured as 50 ms
 * retransmissions. The first
 * connect of the process is printed like the others; the bench keeps it
 * apart, since under the shim it also starts the responder thread. */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
"usage: nb-connect --connect IP:PORT [--count N] [--bytes B] [--gap-ms G] [--timeout-ms T]\n"
"Makes N TCP connections to an echo server one after another, each from a\n"
"non-blocking socket: connect() timed alone, then poll for POLLOUT and\n"
"SO_ERROR, then B bytes sent and their echo checked, then close.\n"
"\n"
"  --connect IP:PORT  the echo server\n"
"  --count N          connections (default 100, at most 100000)\n"
"  --bytes B          echoed per connection (default 64, at most 65536)\n"
"  --gap-ms G         pause between connections, untimed (default 0)\n"
"  --timeout-ms T     bound on each connection (default 10000)\n"
"\n"
"Prints per connection: RUN i call_ns= est_us= returned=0|EINPROGRESS, or\n"
"FAILED i step: ERRNO; at the end SUMMARY n= ok= einprogress= immediate=,\n"
"then DONE ok (exit 0) or ERROR (exit 1). Usage errors exit 2.\n";

static long long mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage_error(const char *what, const char *arg)
{
	fprintf(stderr, "nb-connect: %s '%s' (try --help)\n", what, arg);
	exit(2);
}

/* Wait for `events` on fd until the absolute deadline; 0 when ready. */
static int wait_for(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		long long left = (deadline - mono_ns()) / 1000000LL;
		int n;

		if (left <= 0)
			return ETIMEDOUT;
		n = poll(&p, 1, (int)(left > 1000 ? 1000 : left + 1));
		if (n < 0 && errno != EINTR)
			return errno;
		if (n > 0)
			return 0;
	}
}

/* The echo of `len` bytes on a connected non-blocking socket; 0 or an errno
 * (EBADMSG for bytes that differ). */
static int echo(int fd, const unsigned char *out, size_t len, long long deadline)
{
	unsigned char in[65536];
	size_t sent = 0, got = 0;

	while (sent < len) {
		ssize_t n = send(fd, out + sent, len - sent, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN && wait_for(fd, POLLOUT, deadline) == 0)
			continue;
		if (n < 0)
			return errno == EAGAIN ? ETIMEDOUT : errno;
		sent += (size_t)n;
	}
	while (got < len) {
		ssize_t n = recv(fd, in + got, len - got, 0);

		if (n < 0 && errno == EAGAIN) {
			int w = wait_for(fd, POLLIN, deadline);

			if (w != 0)
				return w;
			continue;
		}
		if (n < 0)
			return errno;
		if (n == 0)
			return ECONNRESET;
		got += (size_t)n;
	}
	return memcmp(in, out, len) == 0 ? 0 : EBADMSG;
}

/* One connection; prints its RUN or FAILED line. Returns 1 if it went well;
 * *returned is what connect() returned (0 or its errno). */
static int one(long i, const struct sockaddr_in *to, const unsigned char *data, size_t len,
	       long timeout_ms, int *returned)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	long long t0, t1, t2, deadline;
	int err = 0, rc;
	socklen_t elen = sizeof err;
	const char *step = "connect";

	*returned = -1;
	if (fd < 0) {
		say("FAILED %ld socket: %s", i, errno_name(errno));
		return 0;
	}
	t0 = mono_ns();
	rc = connect(fd, (const struct sockaddr *)to, sizeof *to);
	t1 = mono_ns();
	*returned = rc == 0 ? 0 : errno;
	deadline = t1 + timeout_ms * 1000000LL;
	if (rc < 0 && *returned != EINPROGRESS) {
		err = *returned;
	} else if (rc < 0) {
		step = "poll";
		err = wait_for(fd, POLLOUT, deadline);
		if (err == 0) {
			step = "SO_ERROR";
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
				err = errno;
		}
	}
	t2 = mono_ns();
	if (err == 0) {
		step = "echo";
		err = echo(fd, data, len, deadline);
	}
	close(fd);
	if (err != 0) {
		say("FAILED %ld %s: %s", i, step, errno_name(err));
		return 0;
	}
	say("RUN %ld call_ns=%lld est_us=%.3f returned=%s", i, t1 - t0, (t2 - t0) / 1e3,
	    *returned ? errno_name(*returned) : "0");
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", required_argument, 0, 'c' }, { "count", required_argument, 0, 'n' },
		{ "bytes", required_argument, 0, 'b' },   { "timeout-ms", required_argument, 0, 'T' },
		{ "gap-ms", required_argument, 0, 'g' },  { "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct sockaddr_in to;
	long count = 100, nbytes = 64, timeout_ms = 10000, gap_ms = 0, i, ok = 0, inprogress = 0, immediate = 0;
	unsigned char data[65536];
	int o, have_to = 0;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			if (parse_ipport(optarg, &to) < 0)
				usage_error("bad --connect", optarg);
			have_to = 1;
			break;
		case 'n':
			if (parse_long(optarg, 1, 100000, &count) < 0)
				usage_error("bad --count", optarg);
			break;
		case 'b':
			if (parse_long(optarg, 1, (long)sizeof data, &nbytes) < 0)
				usage_error("bad --bytes", optarg);
			break;
		case 'g':
			if (parse_long(optarg, 0, 60000, &gap_ms) < 0)
				usage_error("bad --gap-ms", optarg);
			break;
		case 'T':
			if (parse_long(optarg, 1, 3600000, &timeout_ms) < 0)
				usage_error("bad --timeout-ms", optarg);
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (!have_to)
		usage_error("no --connect", "");
	/* Varied bytes, so an echo from the wrong connection cannot match. */
	for (i = 0; i < nbytes; i++)
		data[i] = (unsigned char)(i * 131 + (long)getpid());

	for (i = 0; i < count; i++) {
		int returned;

		if (i > 0 && gap_ms > 0)
			poll(NULL, 0, (int)gap_ms);
		ok += one(i, &to, data, (size_t)nbytes, timeout_ms, &returned);
		inprogress += returned == EINPROGRESS;
		immediate += returned == 0;
	}
	say("SUMMARY n=%ld ok=%ld einprogress=%ld immediate=%ld", count, ok, inprogress, immediate);
	if (ok == count) {
		say("DONE ok");
		return 0;
	}
	say("ERROR %ld connections failed", count - ok);
	return 1;
}
