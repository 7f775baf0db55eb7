/* echo-client.c - the measuring client that stands in for an unmodified
 * legacy program: it connects to echo-server, checks every echoed byte and
 * prints per-run timings and a summary (docs/design.md, "Measuring"). This file
 * holds options, the worker threads and the SUMMARY; the runs themselves are
 * in client-tcp.c and client-udp.c. */
#define _GNU_SOURCE
#include "client.h"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char usage_text[] =
"usage: echo-client --connect IP:PORT [options]\n"
"Measures connection and echo time against echo-server and verifies every\n"
"byte. Prints 'RUN i conn_us=X data_us=Y bytes=B' per run (i counts runs\n"
"across threads), 'LOCAL IP:PORT PEER IP:PORT' for the first run of each\n"
"thread (TCP and connected UDP), and a final 'SUMMARY runs= ok=\n"
"conn_us_mean= conn_us_sd= data_us_mean= data_us_sd= lost= reordered='\n"
"with sample standard deviations over the successful runs of all threads.\n"
"\n"
"  --proto tcp|udp    protocol (default tcp)\n"
"  --connect IP:PORT  server address (required)\n"
"  --bind IP          local IPv4 address to bind before connecting\n"
"  --bytes N          payload per round (default 1024; udp: 12..65000, the\n"
"                     first 12 bytes carry run and sequence number)\n"
"  --rounds M         echo rounds per run (default 1)\n"
"  --runs R           runs, each with a fresh socket (default 1)\n"
"  --parallel P       threads, each doing all R runs at once (default 1)\n"
"  --nonblock         non-blocking connect (EINPROGRESS, poll, SO_ERROR) and\n"
"                     non-blocking data phase driven by poll\n"
"  --udp-connected    udp: connect() then send()/recv() instead of\n"
"                     sendto()/recvfrom() with a check of the source address\n"
"  --timeout-ms T     bound on connect and on each wait for echo data\n"
"                     (default 5000)\n"
"  --allow-loss       udp: lost or reordered datagrams are reported but do\n"
"                     not fail the run\n"
"  --help             this text\n"
"\n"
"Exit: 0 success, 1 data or verification failure, 2 usage error,\n"
"3 connect failed (after a 'CONNECT-FAILED ENAME: message' line).\n";

static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "echo-client: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (try --help)\n");
	exit(EXIT_USAGE);
}

/* Each byte is the previous one plus 31 modulo 251, so the pattern can be
 * produced and checked at memory speed and stays out of the timings. */
void pat_fill(unsigned char *p, long run, long round, uint64_t off, size_t n)
{
	unsigned v = pat_byte(run, round, off);
	size_t i;

	for (i = 0; i < n; i++) {
		p[i] = (unsigned char)v;
		v += 31;
		if (v >= 251)
			v -= 251;
	}
}

int pat_check(const unsigned char *p, size_t n, long run, long round,
	      uint64_t off)
{
	unsigned v = pat_byte(run, round, off);
	size_t i;

	for (i = 0; i < n; i++, v = v + 31 >= 251 ? v + 31 - 251 : v + 31) {
		unsigned char want = (unsigned char)v;

		if (p[i] != want) {
			say("MISMATCH run=%ld round=%ld offset=%llu expected=%u got=%u",
			    run, round, (unsigned long long)(off + i),
			    (unsigned)want, (unsigned)p[i]);
			return -1;
		}
	}
	return 0;
}

int cli_socket(const struct cli_cfg *c, int type)
{
	int fd = socket(AF_INET, type, 0), saved;

	if (fd < 0)
		return -1;
	if (c->has_bind) {
		struct sockaddr_in sa;

		memset(&sa, 0, sizeof sa);
		sa.sin_family = AF_INET;
		sa.sin_addr = c->bind_ip;
		if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			goto fail;
	}
	if (c->nonblock && set_nonblock(fd, 1) < 0)
		goto fail;
	return fd;
fail:
	saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

int wait_fd(int fd, short ev, int timeout_ms)
{
	uint64_t end = now_us() + (uint64_t)timeout_ms * 1000u;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = ev};
		uint64_t t = now_us();
		int ms = t >= end ? 0 : (int)((end - t + 999) / 1000);
		int r = poll(&p, 1, ms);

		if (r > 0)
			return 1;
		if (r == 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

void connect_failed(int err, const char *what)
{
	say("CONNECT-FAILED %s: %s: %s", errno_name(err), what, strerror(err));
}

void print_endpoints(int fd)
{
	char local[ADDR_STR], peer[ADDR_STR];

	sock_addr_str(fd, 0, local, sizeof local);
	sock_addr_str(fd, 1, peer, sizeof peer);
	say("LOCAL %s PEER %s", local, peer);
}

struct worker {
	const struct cli_cfg *c;
	long index;
	struct run_result *res; /* c->runs entries */
};

static void *worker_main(void *p)
{
	struct worker *w = p;
	const struct cli_cfg *c = w->c;
	long r;

	for (r = 0; r < c->runs; r++) {
		struct run_result *res = &w->res[r];
		/* Runs are numbered across threads so each has its own
		 * data pattern and its own RUN line. */
		long run = w->index * c->runs + r;

		if (c->udp)
			udp_run(c, run, r == 0, res);
		else
			tcp_run(c, run, r == 0, res);
		if (res->measured)
			say("RUN %ld conn_us=%llu data_us=%llu bytes=%llu", run,
			    (unsigned long long)res->conn_us,
			    (unsigned long long)res->data_us,
			    (unsigned long long)res->bytes);
		if (res->abort)
			break;
	}
	return NULL;
}

static void mean_sd(const double *x, long n, double *mean, double *sd)
{
	double s = 0, q = 0;
	long i;

	*mean = *sd = 0;
	if (n == 0)
		return;
	for (i = 0; i < n; i++)
		s += x[i];
	*mean = s / (double)n;
	if (n < 2)
		return;
	for (i = 0; i < n; i++)
		q += (x[i] - *mean) * (x[i] - *mean);
	*sd = sqrt(q / (double)(n - 1)); /* sample standard deviation */
}

static int summarize(const struct cli_cfg *c, const struct run_result *res)
{
	long total = c->parallel * c->runs, ok = 0, lost = 0, reord = 0, i;
	double *cu = calloc((size_t)total, sizeof *cu);
	double *du = calloc((size_t)total, sizeof *du);
	double cm, cs, dm, ds;
	int saw_data = 0, saw_connect = 0, unrun = 0;

	if (cu == NULL || du == NULL) {
		perror("echo-client: calloc");
		return EXIT_DATA;
	}
	for (i = 0; i < total; i++) {
		const struct run_result *r = &res[i];

		lost += r->lost;
		reord += r->reordered;
		if (r->code == EXIT_DATA)
			saw_data = 1;
		else if (r->code == EXIT_CONNECT)
			saw_connect = 1;
		else if (!r->measured && r->code == 0)
			unrun = 1; /* skipped after an earlier failure */
		if (r->ok) {
			cu[ok] = (double)r->conn_us;
			du[ok] = (double)r->data_us;
			ok++;
		}
	}
	mean_sd(cu, ok, &cm, &cs);
	mean_sd(du, ok, &dm, &ds);
	say("SUMMARY runs=%ld ok=%ld conn_us_mean=%.1f conn_us_sd=%.1f "
	    "data_us_mean=%.1f data_us_sd=%.1f lost=%ld reordered=%ld",
	    total, ok, cm, cs, dm, ds, lost, reord);
	free(cu);
	free(du);
	/* A data failure says more than a connect failure that came with it. */
	if (saw_data)
		return EXIT_DATA;
	if (saw_connect)
		return EXIT_CONNECT;
	return unrun ? EXIT_DATA : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"proto", required_argument, NULL, 'P'},
		{"connect", required_argument, NULL, 'c'},
		{"bind", required_argument, NULL, 'b'},
		{"bytes", required_argument, NULL, 'n'},
		{"rounds", required_argument, NULL, 'm'},
		{"runs", required_argument, NULL, 'r'},
		{"parallel", required_argument, NULL, 'p'},
		{"nonblock", no_argument, NULL, 'N'},
		{"udp-connected", no_argument, NULL, 'U'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"allow-loss", no_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct cli_cfg cfg = {.bytes = 1024, .rounds = 1, .runs = 1,
			      .parallel = 1, .timeout_ms = 5000};
	struct run_result *res;
	struct worker *w;
	pthread_t *tids;
	int opt, have_dst = 0, rc;
	long v, i;

	opterr = 0; /* our own one-line messages instead of getopt's */
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'P':
			if (strcmp(optarg, "tcp") && strcmp(optarg, "udp"))
				usage_error("bad --proto '%s'", optarg);
			cfg.udp = !strcmp(optarg, "udp");
			break;
		case 'c':
			if (parse_ipport(optarg, &cfg.dst) < 0)
				usage_error("bad --connect '%s', want IP:PORT",
					    optarg);
			have_dst = 1;
			break;
		case 'b':
			if (parse_ipv4(optarg, &cfg.bind_ip) < 0)
				usage_error("bad --bind address '%s'", optarg);
			cfg.has_bind = 1;
			break;
		case 'n':
			if (parse_long(optarg, 1, 1L << 40, &v) < 0)
				usage_error("bad --bytes '%s'", optarg);
			cfg.bytes = (uint64_t)v;
			break;
		case 'm':
			if (parse_long(optarg, 1, 100000000, &cfg.rounds) < 0)
				usage_error("bad --rounds '%s'", optarg);
			break;
		case 'r':
			if (parse_long(optarg, 1, 10000000, &cfg.runs) < 0)
				usage_error("bad --runs '%s'", optarg);
			break;
		case 'p':
			if (parse_long(optarg, 1, 1024, &cfg.parallel) < 0)
				usage_error("bad --parallel '%s'", optarg);
			break;
		case 'N':
			cfg.nonblock = 1;
			break;
		case 'U':
			cfg.udp_connected = 1;
			break;
		case 't':
			if (parse_long(optarg, 1, 3600000, &v) < 0)
				usage_error("bad --timeout-ms '%s'", optarg);
			cfg.timeout_ms = (int)v;
			break;
		case 'L':
			cfg.allow_loss = 1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			usage_error("unknown or incomplete option '%s'",
				    argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (!have_dst)
		usage_error("%s", "--connect IP:PORT is required");
	if (cfg.udp && (cfg.bytes < 12 || cfg.bytes > 65000))
		usage_error("%s", "udp --bytes must be within 12..65000");
	if (!cfg.udp && (cfg.udp_connected || cfg.allow_loss))
		usage_error("%s", "--udp-connected/--allow-loss need --proto udp");
	if ((double)cfg.parallel * (double)cfg.runs > 1e8)
		usage_error("%s", "too many runs in total");

	/* A server that vanishes must show up as an error, not kill us. */
	signal(SIGPIPE, SIG_IGN);

	res = calloc((size_t)(cfg.parallel * cfg.runs), sizeof *res);
	w = calloc((size_t)cfg.parallel, sizeof *w);
	tids = calloc((size_t)cfg.parallel, sizeof *tids);
	if (res == NULL || w == NULL || tids == NULL) {
		perror("echo-client: calloc");
		return EXIT_DATA;
	}
	for (i = 0; i < cfg.parallel; i++) {
		w[i].c = &cfg;
		w[i].index = i;
		w[i].res = res + i * cfg.runs;
	}
	if (cfg.parallel == 1) {
		worker_main(&w[0]);
	} else {
		for (i = 0; i < cfg.parallel; i++) {
			if (pthread_create(&tids[i], NULL, worker_main, &w[i])) {
				fprintf(stderr, "echo-client: pthread_create failed\n");
				return EXIT_DATA;
			}
		}
		for (i = 0; i < cfg.parallel; i++)
			pthread_join(tids[i], NULL);
	}
	rc = summarize(&cfg, res);
	free(tids);
	free(w);
	free(res);
	return rc;
}
