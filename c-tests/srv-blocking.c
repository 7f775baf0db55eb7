/* srv-blocking.c - echo-server's blocking mode (blocking accept() and
 * recvfrom() loops, one thread per socket with --proto both) and the
 * --fork per-connection children, which every mode shares. */
#define _GNU_SOURCE
#include "common.h"
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

void echo_blocking(int fd)
{
	char buf[IO_BUF];

	for (;;) {
		ssize_t r = read(fd, buf, g_io_size);

		if (r < 0) {
			if (errno == EINTR && !g_stop)
				continue;
			return;
		}
		if (r == 0)
			return; /* peer half-closed: everything was echoed */
		if (write_all(fd, buf, (size_t)r) < 0)
			return;
	}
}

static void on_chld_reap(int sig)
{
	int saved = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		g_reaped = g_reaped + 1;
	wake_loop();
	errno = saved;
}

void install_sigchld_reaper(void)
{
	on_signal(SIGCHLD, on_chld_reap, 0);
}

int fork_echo_child(int fd, const int *close_fds, int nclose)
{
	sigset_t none;
	pid_t pid = fork();
	int i;

	if (pid < 0) {
		perror("echo-server: fork");
		return -1;
	}
	if (pid > 0) {
		g_forked = g_forked + 1;
		return 0;
	}
	/* The child serves one connection and dies on SIGTERM like any
	 * simple forking daemon; the server's handlers and sockets are not its
	 * business, and a listener kept open here would outlive the server. */
	g_wake_fd = -1;
	on_signal(SIGTERM, SIG_DFL, 0);
	on_signal(SIGINT, SIG_DFL, 0);
	on_signal(SIGCHLD, SIG_DFL, 0);
	sigemptyset(&none);
	pthread_sigmask(SIG_SETMASK, &none, NULL);
	for (i = 0; i < nclose; i++)
		if (close_fds[i] >= 0 && close_fds[i] != fd)
			close(close_fds[i]);
	/* Event loops hand over non-blocking fds; the child is a plain
	 * blocking echo. */
	set_nonblock(fd, 0);
	echo_blocking(fd);
	close(fd);
	_exit(0);
}

/* After the last allowed connection, --max-conns means "served", so the
 * children still echoing must finish first. sigsuspend closes the window
 * between testing the counters and sleeping. */
static void wait_children(void)
{
	sigset_t block, old;

	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	while (g_reaped < g_forked && !g_stop)
		sigsuspend(&old);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static enum loop_end tcp_loop(const struct srv_cfg *c, int lfd, int ufd)
{
	long served = 0;
	int mine[2] = {lfd, ufd};

	for (;;) {
		int fd;

		if (g_stop)
			return LOOP_STOP;
		if (tcp_limited(c, lfd) && served >= c->max_conns) {
			wait_children();
			return g_stop ? LOOP_STOP : LOOP_LIMIT;
		}
		/* A stop signal landing between the g_stop test above and
		 * accept() is only noticed at the next wake-up. The window is
		 * a few instructions wide; closing it would take siglongjmp
		 * out of a libc call the shim may be running, which is worse. */
		fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EPROTO)
				continue;
			perror("echo-server: accept");
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				usleep(10000); /* back off, do not spin */
				continue;
			}
			return LOOP_ERROR;
		}
		served++;
		report_accept(fd);
		if (c->fork_per_conn)
			fork_echo_child(fd, mine, 2);
		else
			echo_blocking(fd);
		close(fd);
	}
}

static enum loop_end udp_loop(const struct srv_cfg *c, int ufd)
{
	char buf[IO_BUF];
	long echoed = 0;

	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t r, w;

		if (g_stop)
			return LOOP_STOP;
		if (udp_limited(c, ufd) && echoed >= c->max_dgrams)
			return LOOP_LIMIT;
		r = recvfrom(ufd, buf, g_dgram_cap, 0, (struct sockaddr *)&from,
			     &fl);
		if (r < 0) {
			/* ICMP errors for earlier replies are no reason to
			 * stop serving everybody else. */
			if (errno == EINTR || errno == ECONNREFUSED)
				continue;
			perror("echo-server: recvfrom");
			return LOOP_ERROR;
		}
		do
			w = sendto(ufd, buf, (size_t)r, 0,
				   (struct sockaddr *)&from, fl);
		while (w < 0 && errno == EINTR && !g_stop);
		if (w < 0 && !g_stop)
			perror("echo-server: sendto");
		echoed++;
	}
}

struct udp_thread_arg {
	const struct srv_cfg *c;
	int ufd;
	enum loop_end end;
};

static pthread_mutex_t g_limit_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_limits_left;

/* With two sockets the process is done only once every given limit is. */
static void limit_reached(void)
{
	pthread_mutex_lock(&g_limit_mu);
	if (--g_limits_left <= 0) {
		fflush(stdout);
		exit(0);
	}
	pthread_mutex_unlock(&g_limit_mu);
}

static void *udp_thread(void *p)
{
	struct udp_thread_arg *a = p;
	sigset_t stop;

	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
	a->end = udp_loop(a->c, a->ufd);
	if (a->end == LOOP_LIMIT)
		limit_reached();
	return NULL;
}

static enum loop_end serve_both(const struct srv_cfg *c, int lfd, int ufd)
{
	struct udp_thread_arg arg = {.c = c, .ufd = ufd};
	sigset_t block;
	pthread_t tid;
	enum loop_end end;

	g_limits_left = tcp_limited(c, lfd) + udp_limited(c, ufd);
	/* Stop signals stay blocked until both threads are registered, so
	 * none can arrive while the handler could not yet forward it. SIGCHLD
	 * stays blocked in the UDP thread for good: the TCP thread forks and
	 * must be the one whose sigsuspend it ends. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	if (pthread_create(&tid, NULL, udp_thread, &arg) != 0) {
		fprintf(stderr, "echo-server: pthread_create failed\n");
		return LOOP_ERROR;
	}
	register_stop_thread(pthread_self());
	register_stop_thread(tid);
	pthread_sigmask(SIG_UNBLOCK, &block, NULL);

	end = tcp_loop(c, lfd, ufd);
	if (end == LOOP_LIMIT)
		limit_reached();
	if (end == LOOP_ERROR) {
		/* Leave the UDP thread behind rather than hang on join. */
		fflush(stdout);
		return LOOP_ERROR;
	}
	pthread_join(tid, NULL);
	return arg.end == LOOP_ERROR ? LOOP_ERROR : end;
}

enum loop_end serve_blocking(const struct srv_cfg *c, int lfd, int ufd)
{
	if (c->fork_per_conn)
		install_sigchld_reaper();
	if (lfd >= 0 && ufd >= 0)
		return serve_both(c, lfd, ufd);
	if (lfd >= 0)
		return tcp_loop(c, lfd, -1);
	return udp_loop(c, ufd);
}
