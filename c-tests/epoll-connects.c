/* epoll-connects.c - an event-loop client standing in for legacy programs
 * that connect many peers at once from one thread: non-blocking connect,
 * EPOLLOUT, getsockopt(SO_ERROR), all fds edge-triggered, and a 10 ms
 * timerfd in the same epoll set. It measures what issue 12 asks of a shim:
 * how long the thread spends inside each connect call, and the longest gap
 * between two ticks of the timer while the connects are in flight; it
 * checks every echoed byte.
 *
 * For each connect call it records the wall time, the thread's CPU time and
 * whether the thread slept (a voluntary context switch, getrusage). A call of
 * 1 ms or more is counted as blocked if it slept, as busy if it used 1 ms of
 * CPU without sleeping (the kernel charges the packets it processes for
 * every socket in softirq to whichever thread is in a system call then), or
 * else as preempted. Output lines (see usage) are parsed by
 * testbed/tests/event_loops.rs; their names match async_connects.py's. */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
"usage: epoll-connects --target IP:PORT [--target ...] [options]\n"
"Starts --count non-blocking connects at once (round-robin over targets),\n"
"completes them with edge-triggered epoll (EPOLLOUT, then SO_ERROR), sends\n"
"--bytes random bytes on each, shuts the write side and checks the echo.\n"
"Each --refused address gets one connect that must fail through SO_ERROR.\n"
"\n"
"  --target IP:PORT   an echo server (up to 16)\n"
"  --refused IP:PORT  an address whose connect must be refused (up to 8)\n"
"  --count N          connections to targets (default 100, at most 1000)\n"
"  --bytes B          payload per connection (default 4096)\n"
"  --timeout-ms T     bound on the whole run (default 60000)\n"
"\n"
"Prints: SLOWCALL addr= us= kind= vcsw= cpu_us= returned= for each call of 1 ms or\n"
"more as it happens; at the end CALLS n= einprogress= immediate= max_us= p50_us= blocked=\n"
"max_blocked_us= busy= max_busy_cpu_us= preempted= slept=; TIMER ticks= max_gap_ms=; TARGET addr= ok= of=\n"
"max_complete_ms=; REFUSED addr= returned= so_error= ms=; ECHO ok= bad=;\n"
"FAILED lines; then DONE ok (exit 0) or ERROR (exit 1). Usage errors exit 2.\n";

#define MAX_TARGETS 16
#define MAX_REFUSED 8
#define MAX_CONNS 1000
#define SLOW_NS 1000000LL

enum state { CONNECTING, SENDING, READING, FINISHED };

struct conn {
	int fd;
	int target;          /* index into targets, or -1 for a --refused one */
	int refused_ix;
	enum state st;
	int ok;
	size_t sent, got;
	uint64_t started_us, complete_us;
	int returned;        /* what connect returned: 0 or an errno */
	unsigned char *data;
	char why[96];
};

static struct sockaddr_in targets[MAX_TARGETS], refused[MAX_REFUSED];
static int ntargets, nrefused;
static long count = 100, nbytes = 4096, timeout_ms = 60000;
static struct conn conns[MAX_CONNS + MAX_REFUSED];
static int nconns;

static long long wall_ns[MAX_CONNS + MAX_REFUSED];
static long long max_blocked_ns;
static int nblocked, npreempted, neinprogress, nimmediate;
static int nslept; /* calls that slept at all, however briefly */
static int nbusy;
static long long max_busy_cpu_ns;

static long long ns_of(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long nvcsw(void)
{
	struct rusage ru;

	getrusage(RUSAGE_THREAD, &ru);
	return ru.ru_nvcsw;
}

static void usage_error(const char *what, const char *arg)
{
	fprintf(stderr, "epoll-connects: %s '%s' (try --help)\n", what, arg);
	exit(2);
}

static const char *slow_kind; /* the last slow call: "blocked", "busy" or "preempted" */
static long slow_vcsw; /* its voluntary context switches */
static long long slow_cpu_ns; /* and the CPU time it used */

/* The timed call; the rest of the loop is ordinary. */
static int timed_connect_call(int fd, const struct sockaddr_in *to)
{
	long v0 = nvcsw();
	long long c0 = ns_of(CLOCK_THREAD_CPUTIME_ID);
	long long t0 = ns_of(CLOCK_MONOTONIC);
	int rc = connect(fd, (const struct sockaddr *)to, sizeof *to);
	int err = rc == 0 ? 0 : errno;
	long long took = ns_of(CLOCK_MONOTONIC) - t0;
	long long cpu = ns_of(CLOCK_THREAD_CPUTIME_ID) - c0;
	long v1 = nvcsw();

	wall_ns[nconns] = took;
	if (v1 > v0)
		nslept++;
	if (took >= SLOW_NS) {
		slow_vcsw = v1 - v0;
		slow_cpu_ns = cpu;
		if (v1 > v0) {
			slow_kind = "blocked";
			nblocked++;
			if (took > max_blocked_ns)
				max_blocked_ns = took;
		} else if (cpu >= SLOW_NS) {
			slow_kind = "busy";
			nbusy++;
			if (cpu > max_busy_cpu_ns)
				max_busy_cpu_ns = cpu;
		} else {
			slow_kind = "preempted";
			npreempted++;
		}
	}
	if (err == EINPROGRESS)
		neinprogress++;
	else if (err == 0)
		nimmediate++;
	return err;
}

/* A slow call is reported as it happens (SLOWCALL), so a run that never
 * finishes still shows where its time went. */
static int timed_connect(int fd, const struct sockaddr_in *to)
{
	char addr[ADDR_STR];
	int err = timed_connect_call(fd, to);

	if (wall_ns[nconns] >= SLOW_NS) {
		fmt_addr(to, addr, sizeof addr);
		say("SLOWCALL addr=%s us=%.0f kind=%s vcsw=%ld cpu_us=%.0f returned=%s", addr,
		    wall_ns[nconns] / 1e3, slow_kind, slow_vcsw, slow_cpu_ns / 1e3, err ? errno_name(err) : "0");
	}
	return err;
}

static void fail(struct conn *c, const char *fmt, const char *arg)
{
	snprintf(c->why, sizeof c->why, fmt, arg);
	c->st = FINISHED;
	c->ok = 0;
	close(c->fd);
}

static void start(int ep, int target, int refused_ix)
{
	struct conn *c = &conns[nconns];
	const struct sockaddr_in *to = target >= 0 ? &targets[target] : &refused[refused_ix];
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };

	c->target = target;
	c->refused_ix = refused_ix;
	c->started_us = now_us();
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		perror("socket");
		exit(1);
	}
	if (target >= 0) {
		c->data = malloc((size_t)nbytes);
		if (c->data == NULL || getrandom(c->data, (size_t)nbytes, 0) != nbytes) {
			perror("payload");
			exit(1);
		}
	}
	c->returned = timed_connect(c->fd, to);
	nconns++;
	ev.data.ptr = c;
	if (c->returned != 0 && c->returned != EINPROGRESS) {
		/* A --refused connect that failed in the call has no SO_ERROR to show. */
		fail(c, target >= 0 ? "connect returned %s" : "none", errno_name(c->returned));
		c->complete_us = now_us();
		return;
	}
	c->st = CONNECTING;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		fail(c, "epoll_ctl: %s", errno_name(errno));
}

/* Edge-triggered: each step runs until the kernel says EAGAIN. */
static void step(struct conn *c)
{
	if (c->st == CONNECTING) {
		int err = 0;
		socklen_t len = sizeof err;

		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (c->target < 0) {
			/* A --refused connect: the verdict is SO_ERROR itself. */
			c->ok = err == ECONNREFUSED;
			snprintf(c->why, sizeof c->why, "%s", err ? errno_name(err) : "0");
			c->complete_us = now_us();
			c->st = FINISHED;
			close(c->fd);
			return;
		}
		if (err != 0) {
			fail(c, "SO_ERROR %s", errno_name(err));
			return;
		}
		c->complete_us = now_us();
		c->st = SENDING;
	}
	while (c->st == SENDING) {
		ssize_t n = send(c->fd, c->data + c->sent, (size_t)nbytes - c->sent, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			fail(c, "send: %s", errno_name(errno));
			return;
		}
		c->sent += (size_t)n;
		if (c->sent == (size_t)nbytes) {
			shutdown(c->fd, SHUT_WR);
			c->st = READING;
		}
	}
	while (c->st == READING) {
		unsigned char buf[IO_BUF];
		ssize_t n = recv(c->fd, buf, sizeof buf, 0);

		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			fail(c, "recv: %s", errno_name(errno));
			return;
		}
		if (n == 0) {
			if (c->got != (size_t)nbytes) {
				fail(c, "echo ended early: %s", "short");
				return;
			}
			c->ok = 1;
			c->st = FINISHED;
			close(c->fd);
			return;
		}
		if (c->got + (size_t)n > (size_t)nbytes || memcmp(buf, c->data + c->got, (size_t)n) != 0) {
			fail(c, "echo differs %s", "from what was sent");
			return;
		}
		c->got += (size_t)n;
	}
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

static int report(int ticks, long long max_gap_ns)
{
	long long sorted[MAX_CONNS + MAX_REFUSED];
	int i, t, bad = 0, nok = 0;
	char addr[ADDR_STR];

	memcpy(sorted, wall_ns, sizeof(long long) * (size_t)nconns);
	qsort(sorted, (size_t)nconns, sizeof sorted[0], cmp_ll);
	say("CALLS n=%d einprogress=%d immediate=%d max_us=%.1f p50_us=%.1f blocked=%d max_blocked_us=%.1f busy=%d max_busy_cpu_us=%.1f preempted=%d slept=%d",
	    nconns, neinprogress, nimmediate, sorted[nconns - 1] / 1e3, sorted[nconns / 2] / 1e3, nblocked,
	    max_blocked_ns / 1e3, nbusy, max_busy_cpu_ns / 1e3, npreempted, nslept);
	say("TIMER ticks=%d max_gap_ms=%.1f", ticks, max_gap_ns / 1e6);
	for (t = 0; t < ntargets; t++) {
		int ok = 0, of = 0;
		uint64_t worst = 0;

		for (i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];

			if (c->target != t)
				continue;
			of++;
			ok += c->ok;
			if (c->complete_us > c->started_us && c->complete_us - c->started_us > worst)
				worst = c->complete_us - c->started_us;
		}
		fmt_addr(&targets[t], addr, sizeof addr);
		say("TARGET addr=%s ok=%d of=%d max_complete_ms=%.0f", addr, ok, of, worst / 1e3);
	}
	for (i = 0; i < nconns; i++) {
		struct conn *c = &conns[i];

		if (c->target >= 0) {
			nok += c->ok;
			if (!c->ok && bad++ < 20) {
				fmt_addr(&targets[c->target], addr, sizeof addr);
				say("FAILED %s: %s", addr, c->st == FINISHED ? c->why : "unfinished");
			}
			continue;
		}
		fmt_addr(&refused[c->refused_ix], addr, sizeof addr);
		say("REFUSED addr=%s returned=%s so_error=%s ms=%.0f", addr,
		    c->returned ? errno_name(c->returned) : "0", c->st == FINISHED ? c->why : "unfinished",
		    c->st == FINISHED ? (c->complete_us - c->started_us) / 1e3 : -1.0);
	}
	say("ECHO ok=%d bad=%ld", nok, count - nok);
	if (nok == count) {
		say("DONE ok");
		return 0;
	}
	say("ERROR %ld connections failed", count - nok);
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "target", required_argument, 0, 't' }, { "refused", required_argument, 0, 'r' },
		{ "count", required_argument, 0, 'n' },  { "bytes", required_argument, 0, 'b' },
		{ "timeout-ms", required_argument, 0, 'T' }, { "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct itimerspec every = { .it_interval = { 0, 10000000 }, .it_value = { 0, 10000000 } };
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET }, evs[64];
	long long last_tick, max_gap = 0, deadline;
	int o, i, ep, tfd, ticks = 0, open_conns;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't':
			if (ntargets == MAX_TARGETS || parse_ipport(optarg, &targets[ntargets++]) < 0)
				usage_error("bad or too many --target", optarg);
			break;
		case 'r':
			if (nrefused == MAX_REFUSED || parse_ipport(optarg, &refused[nrefused++]) < 0)
				usage_error("bad or too many --refused", optarg);
			break;
		case 'n':
			if (parse_long(optarg, 1, MAX_CONNS, &count) < 0)
				usage_error("bad --count", optarg);
			break;
		case 'b':
			if (parse_long(optarg, 1, 1 << 24, &nbytes) < 0)
				usage_error("bad --bytes", optarg);
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
	if (ntargets == 0)
		usage_error("no --target", "");

	ep = epoll_create1(EPOLL_CLOEXEC);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (ep < 0 || tfd < 0 || timerfd_settime(tfd, 0, &every, NULL) < 0) {
		perror("epoll/timerfd");
		return 1;
	}
	ev.data.ptr = NULL; /* the timer */
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	last_tick = ns_of(CLOCK_MONOTONIC);
	deadline = last_tick + timeout_ms * 1000000LL;

	for (i = 0; i < count; i++)
		start(ep, i % ntargets, -1);
	for (i = 0; i < nrefused; i++)
		start(ep, -1, i);

	for (;;) {
		long long now = ns_of(CLOCK_MONOTONIC);
		int n, k;

		open_conns = 0;
		for (i = 0; i < nconns; i++)
			open_conns += conns[i].st != FINISHED;
		if (open_conns == 0 || now >= deadline)
			break;
		n = epoll_wait(ep, evs, 64, 100);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			return 1;
		}
		for (k = 0; k < n; k++) {
			struct conn *c = evs[k].data.ptr;

			if (c == NULL) {
				uint64_t expirations;

				while (read(tfd, &expirations, sizeof expirations) > 0)
					;
				now = ns_of(CLOCK_MONOTONIC);
				if (now - last_tick > max_gap)
					max_gap = now - last_tick;
				last_tick = now;
				ticks++;
				continue;
			}
			if (c->st != FINISHED)
				step(c);
		}
	}
	return report(ticks, max_gap);
}
