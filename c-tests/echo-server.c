/* echo-server.c - a TCP/UDP echo server standing in for unmodified legacy
 * daemons under the GCB/DPF shim. This file holds option parsing, socket
 * setup, the LISTEN/INHERITED lines tests parse, and the supervising parents
 * of --prefork and --exec; the serving loops are in srv-blocking.c and
 * srv-events.c. */
#define _GNU_SOURCE
#include "common.h"
#include "server.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

volatile sig_atomic_t g_forked;
volatile sig_atomic_t g_reaped;
volatile int g_wake_fd = -1;

static pthread_t g_stop_threads[4];
static volatile sig_atomic_t g_nstop_threads;
static volatile sig_atomic_t g_alarm;

static const char *const mode_names[] = {
	[MODE_BLOCKING] = "blocking", [MODE_SELECT] = "select",
	[MODE_POLL] = "poll",         [MODE_EPOLL] = "epoll",
	[MODE_EPOLL_ET] = "epoll-et", [MODE_NONBLOCK] = "nonblock",
};

static const char usage_text[] =
"usage: echo-server [options]\n"
"Echoes TCP streams and UDP datagrams; prints 'LISTEN tcp|udp IP:PORT' as\n"
"getsockname() reports it, and 'ACCEPT PEER IP:PORT' for each connection.\n"
"\n"
"  --proto tcp|udp|both  protocols to serve (default tcp); 'both' binds UDP\n"
"                        to the port number the TCP listener got\n"
"  --bind IP             local IPv4 address (default 0.0.0.0)\n"
"  --port N              local port (default 0: the kernel chooses)\n"
"  --mode M              blocking | select | poll | epoll | epoll-et | nonblock\n"
"                        (default blocking). blocking: blocking accept() and\n"
"                        recvfrom() loops, connections served one after the\n"
"                        other; with --proto both, one thread per socket.\n"
"                        select/poll/epoll/epoll-et: one single-threaded event\n"
"                        loop over non-blocking fds. nonblock: busy-poll loop\n"
"                        of non-blocking calls that sleeps 1 ms when idle\n"
"  --fork                fork a child per TCP connection; the child echoes and\n"
"                        exits, the parent reaps on SIGCHLD\n"
"  --prefork N           fork N children that each run the accept loop of\n"
"                        --mode on the shared listener; SIGTERM to the parent\n"
"                        stops them all. Limits below then count per child\n"
"  --exec                fork and execve /proc/self/exe, handing the open\n"
"                        sockets over with --inherited-fd; the parent waits\n"
"                        and forwards SIGTERM/SIGINT\n"
"  --inherited-fd N      serve the TCP listener already open on fd N and print\n"
"                        'INHERITED tcp IP:PORT' (set by --exec)\n"
"  --inherited-udp-fd N  the same for the UDP socket with --proto udp|both\n"
"  --max-conns N         exit 0 once N TCP connections were served\n"
"  --max-datagrams N     exit 0 once N UDP datagrams were echoed\n"
"                        (with both limits, exit when both are reached;\n"
"                        without any, run until SIGTERM/SIGINT, then exit 0)\n"
"  --io-size N           bytes asked for per TCP read, 1..65536 (default\n"
"                        65536); small values force many partial reads\n"
"  --help                this text\n";

static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "echo-server: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (try --help)\n");
	exit(2);
}

void wake_loop(void)
{
	int fd = g_wake_fd;

	if (fd >= 0) {
		char b = 1;
		ssize_t r = write(fd, &b, 1);

		(void)r; /* a full pipe already holds a wake-up */
	}
}

void register_stop_thread(pthread_t t)
{
	int n = g_nstop_threads;

	if (n < (int)(sizeof g_stop_threads / sizeof g_stop_threads[0])) {
		g_stop_threads[n] = t;
		g_nstop_threads = n + 1;
	}
}

/* A process-directed signal interrupts only one thread; the others are
 * signalled here so every blocking call returns EINTR and sees g_stop. */
static void on_stop(int sig)
{
	int saved = errno;

	if (!g_stop) {
		int i, n = g_nstop_threads;

		g_stop = 1;
		for (i = 0; i < n; i++)
			if (!pthread_equal(g_stop_threads[i], pthread_self()))
				pthread_kill(g_stop_threads[i], sig);
	}
	wake_loop();
	errno = saved;
}

/* Exists only so SIGCHLD ends sigsuspend(); the supervisor reaps itself. */
static void on_chld_wakeup(int sig)
{
	(void)sig;
}

static void on_alarm(int sig)
{
	(void)sig;
	g_alarm = 1;
}

int tcp_limited(const struct srv_cfg *c, int lfd)
{
	return lfd >= 0 && c->max_conns > 0;
}

int udp_limited(const struct srv_cfg *c, int ufd)
{
	return ufd >= 0 && c->max_dgrams > 0;
}

void report_accept(int fd)
{
	char peer[ADDR_STR];

	sock_addr_str(fd, 1, peer, sizeof peer);
	say("ACCEPT PEER %s", peer);
}

static int open_socket(int type, struct in_addr ip, unsigned port)
{
	struct sockaddr_in sa;
	int one = 1, fd, saved;

	fd = socket(AF_INET, type, 0);
	if (fd < 0)
		return -1;
	/* Restarting on a fixed --port must not wait out TIME_WAIT. */
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr = ip;
	sa.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    (type == SOCK_STREAM && listen(fd, SOMAXCONN) < 0)) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static unsigned bound_port(int fd)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;

	if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
		return 0;
	return ntohs(sa.sin_port);
}

static void die_sys(const char *what)
{
	fprintf(stderr, "echo-server: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void open_sockets(const struct srv_cfg *c, struct in_addr ip,
			 unsigned port, int *lfd, int *ufd)
{
	int attempt;

	*lfd = *ufd = -1;
	if (!c->tcp) {
		*ufd = open_socket(SOCK_DGRAM, ip, port);
		if (*ufd < 0)
			die_sys("udp bind");
		return;
	}
	/* With --port 0 the UDP twin of a kernel-chosen TCP port may be
	 * taken; then another TCP port is tried rather than failing. */
	for (attempt = 0; attempt < 20; attempt++) {
		*lfd = open_socket(SOCK_STREAM, ip, port);
		if (*lfd < 0)
			die_sys("tcp bind/listen");
		if (!c->udp)
			return;
		*ufd = open_socket(SOCK_DGRAM, ip, bound_port(*lfd));
		if (*ufd >= 0)
			return;
		if (errno != EADDRINUSE || port != 0)
			die_sys("udp bind");
		close(*lfd);
	}
	die_sys("udp bind");
}

static void check_inherited(int fd, int want_type, const char *proto)
{
	char addr[ADDR_STR];
	int type = 0;
	socklen_t sl = sizeof type;

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &sl) < 0 ||
	    type != want_type) {
		fprintf(stderr, "echo-server: inherited fd %d is not a %s socket\n",
			fd, proto);
		exit(1);
	}
	sock_addr_str(fd, 0, addr, sizeof addr);
	say("INHERITED %s %s", proto, addr);
}

/* Waits for all kids with signals handled between waits by sigsuspend, so a
 * SIGTERM can never slip in between a check and the sleep. Returns the first
 * unsuccessful child status as an exit code. */
static int supervise(pid_t *kids, long n)
{
	sigset_t block, old;
	long live = n, i;
	int worst = 0, killed = 0, status;

	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGALRM);
	sigprocmask(SIG_BLOCK, &block, &old);
	for (;;) {
		pid_t p;

		while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
			for (i = 0; i < n; i++) {
				if (kids[i] != p)
					continue;
				kids[i] = -1;
				live--;
			}
			if (worst == 0 && WIFEXITED(status))
				worst = WEXITSTATUS(status);
			else if (worst == 0 && WIFSIGNALED(status))
				worst = 128 + WTERMSIG(status);
		}
		if (live <= 0 || (p < 0 && errno == ECHILD))
			break;
		if (g_stop && !killed) {
			for (i = 0; i < n; i++)
				if (kids[i] > 0)
					kill(kids[i], SIGTERM);
			killed = 1;
			/* A child that misses SIGTERM must not keep the
			 * parent alive forever. */
			alarm(3);
		}
		if (g_alarm) {
			g_alarm = 0;
			for (i = 0; i < n; i++)
				if (kids[i] > 0)
					kill(kids[i], SIGKILL);
		}
		sigsuspend(&old);
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	/* Children we told to stop were asked for it; that is success. */
	return killed ? 0 : worst;
}

static int serve(const struct srv_cfg *c, int lfd, int ufd)
{
	enum loop_end e = c->mode == MODE_BLOCKING ? serve_blocking(c, lfd, ufd)
						     : serve_events(c, lfd, ufd);

	return e == LOOP_ERROR ? 1 : 0;
}

static int run_prefork(const struct srv_cfg *c, int lfd, int ufd)
{
	pid_t *kids = calloc((size_t)c->prefork, sizeof *kids);
	int forkfail = 0, rc;
	long i;

	if (kids == NULL)
		die_sys("calloc");
	for (i = 0; i < c->prefork; i++) {
		kids[i] = fork();
		if (kids[i] < 0) {
			perror("echo-server: fork");
			g_stop = 1; /* a partial pool is not what was asked for */
			forkfail = 1;
			break;
		}
		if (kids[i] == 0) {
			free(kids);
			on_signal(SIGCHLD, SIG_DFL, 0);
			_exit(serve(c, lfd, ufd));
		}
	}
	rc = supervise(kids, i);
	free(kids);
	return forkfail ? 1 : rc;
}

static int run_exec(const struct srv_cfg *c, int lfd, int ufd)
{
	static char exe[PATH_MAX], sfd[16], sufd[16], spre[24], smax[24],
		sdg[24], sio[24];
	const char *proto = c->tcp && c->udp ? "both" : c->tcp ? "tcp" : "udp";
	char *args[32];
	int n = 0;
	ssize_t len;
	pid_t pid;

	len = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (len < 0)
		die_sys("readlink /proc/self/exe");
	exe[len] = '\0';
	args[n++] = exe;
	args[n++] = "--proto";
	args[n++] = (char *)proto;
	args[n++] = "--mode";
	args[n++] = (char *)mode_names[c->mode];
	/* The whole point: the new image must find these fds open. */
	if (lfd >= 0) {
		if (set_cloexec(lfd, 0) < 0)
			die_sys("fcntl");
		snprintf(sfd, sizeof sfd, "%d", lfd);
		args[n++] = "--inherited-fd";
		args[n++] = sfd;
	}
	if (ufd >= 0) {
		if (set_cloexec(ufd, 0) < 0)
			die_sys("fcntl");
		snprintf(sufd, sizeof sufd, "%d", ufd);
		args[n++] = "--inherited-udp-fd";
		args[n++] = sufd;
	}
	if (c->fork_per_conn)
		args[n++] = "--fork";
	if (c->prefork > 0) {
		snprintf(spre, sizeof spre, "%ld", c->prefork);
		args[n++] = "--prefork";
		args[n++] = spre;
	}
	if (c->max_conns > 0) {
		snprintf(smax, sizeof smax, "%ld", c->max_conns);
		args[n++] = "--max-conns";
		args[n++] = smax;
	}
	if (c->max_dgrams > 0) {
		snprintf(sdg, sizeof sdg, "%ld", c->max_dgrams);
		args[n++] = "--max-datagrams";
		args[n++] = sdg;
	}
	snprintf(sio, sizeof sio, "%zu", g_io_size);
	args[n++] = "--io-size";
	args[n++] = sio;
	args[n] = NULL;

	pid = fork();
	if (pid < 0)
		die_sys("fork");
	if (pid == 0) {
		/* environ carries LD_PRELOAD and the shim's own variables. */
		execve(exe, args, environ);
		perror("echo-server: execve");
		_exit(127);
	}
	/* The parent keeps its copies open, as Condor's master does. */
	return supervise(&pid, 1);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"proto", required_argument, NULL, 'P'},
		{"bind", required_argument, NULL, 'b'},
		{"port", required_argument, NULL, 'p'},
		{"mode", required_argument, NULL, 'm'},
		{"fork", no_argument, NULL, 'f'},
		{"prefork", required_argument, NULL, 'F'},
		{"exec", no_argument, NULL, 'e'},
		{"inherited-fd", required_argument, NULL, 'i'},
		{"inherited-udp-fd", required_argument, NULL, 'u'},
		{"max-conns", required_argument, NULL, 'c'},
		{"max-datagrams", required_argument, NULL, 'd'},
		{"io-size", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct srv_cfg cfg = {.tcp = 1, .mode = MODE_BLOCKING};
	struct in_addr ip = {.s_addr = htonl(INADDR_ANY)};
	long port = 0, ifd = -1, iufd = -1, v;
	int opt, lfd, ufd;
	size_t m;

	opterr = 0; /* our own one-line messages instead of getopt's */
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'P':
			cfg.tcp = !strcmp(optarg, "tcp") || !strcmp(optarg, "both");
			cfg.udp = !strcmp(optarg, "udp") || !strcmp(optarg, "both");
			if (!cfg.tcp && !cfg.udp)
				usage_error("bad --proto '%s'", optarg);
			break;
		case 'b':
			if (parse_ipv4(optarg, &ip) < 0)
				usage_error("bad --bind address '%s'", optarg);
			break;
		case 'p':
			if (parse_long(optarg, 0, 65535, &port) < 0)
				usage_error("bad --port '%s'", optarg);
			break;
		case 'm':
			for (m = 0; m < sizeof mode_names / sizeof *mode_names; m++)
				if (!strcmp(optarg, mode_names[m]))
					break;
			if (m == sizeof mode_names / sizeof *mode_names)
				usage_error("bad --mode '%s'", optarg);
			cfg.mode = (enum srv_mode)m;
			break;
		case 'f':
			cfg.fork_per_conn = 1;
			break;
		case 'F':
			if (parse_long(optarg, 1, 1024, &cfg.prefork) < 0)
				usage_error("bad --prefork '%s'", optarg);
			break;
		case 'e':
			cfg.exec_child = 1;
			break;
		case 'i':
		case 'u':
			if (parse_long(optarg, 0, INT_MAX, &v) < 0)
				usage_error("bad fd '%s'", optarg);
			*(opt == 'i' ? &ifd : &iufd) = v;
			break;
		case 'c':
			if (parse_long(optarg, 1, LONG_MAX, &cfg.max_conns) < 0)
				usage_error("bad --max-conns '%s'", optarg);
			break;
		case 'd':
			if (parse_long(optarg, 1, LONG_MAX, &cfg.max_dgrams) < 0)
				usage_error("bad --max-datagrams '%s'", optarg);
			break;
		case 's':
			if (parse_long(optarg, 1, IO_BUF, &v) < 0)
				usage_error("bad --io-size '%s'", optarg);
			g_io_size = (size_t)v;
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
	if (cfg.fork_per_conn && cfg.prefork > 0)
		usage_error("%s", "--fork and --prefork exclude each other");
	if (cfg.fork_per_conn && !cfg.tcp)
		usage_error("%s", "--fork needs --proto tcp or both");
	if ((ifd >= 0 || iufd >= 0) && cfg.exec_child)
		usage_error("%s", "--exec and --inherited-fd exclude each other");
	if ((ifd >= 0 || iufd >= 0) &&
	    ((cfg.tcp && ifd < 0) || (cfg.udp && iufd < 0) ||
	     (!cfg.tcp && ifd >= 0) || (!cfg.udp && iufd >= 0)))
		usage_error("%s", "inherited fds must match --proto");

	on_signal(SIGPIPE, SIG_IGN, 0);
	on_signal(SIGTERM, on_stop, 0);
	on_signal(SIGINT, on_stop, 0);
	on_signal(SIGALRM, on_alarm, 0);

	if (ifd >= 0 || iufd >= 0) {
		lfd = (int)ifd;
		ufd = (int)iufd;
		if (lfd >= 0)
			check_inherited(lfd, SOCK_STREAM, "tcp");
		if (ufd >= 0)
			check_inherited(ufd, SOCK_DGRAM, "udp");
	} else {
		char addr[ADDR_STR];

		open_sockets(&cfg, ip, (unsigned)port, &lfd, &ufd);
		if (lfd >= 0) {
			sock_addr_str(lfd, 0, addr, sizeof addr);
			say("LISTEN tcp %s", addr);
		}
		if (ufd >= 0) {
			sock_addr_str(ufd, 0, addr, sizeof addr);
			say("LISTEN udp %s", addr);
		}
	}

	if (cfg.exec_child || cfg.prefork > 0)
		on_signal(SIGCHLD, on_chld_wakeup, 0);
	if (cfg.exec_child)
		return run_exec(&cfg, lfd, ufd);
	if (cfg.prefork > 0)
		return run_prefork(&cfg, lfd, ufd);
	return serve(&cfg, lfd, ufd);
}
