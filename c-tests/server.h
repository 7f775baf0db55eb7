/* server.h - configuration and internal interfaces of echo-server, split
 * across echo-server.c (options, sockets, process supervision),
 * srv-blocking.c (blocking mode) and srv-events.c (event-loop modes). */
#ifndef GCB_CTESTS_SERVER_H
#define GCB_CTESTS_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

enum srv_mode {
	MODE_BLOCKING,
	MODE_SELECT,
	MODE_POLL,
	MODE_EPOLL,
	MODE_EPOLL_ET,
	MODE_NONBLOCK,
};

struct srv_cfg {
	int tcp, udp;         /* protocols served */
	enum srv_mode mode;
	int fork_per_conn;    /* --fork */
	long prefork;         /* --prefork N, 0 = off */
	int exec_child;       /* --exec */
	long max_conns;       /* 0 = unlimited */
	long max_dgrams;      /* 0 = unlimited */
};

/* Outcome of one serving loop. */
enum loop_end { LOOP_STOP, LOOP_LIMIT, LOOP_ERROR };

/* Children forked for --fork connections; only the forking code writes
 * g_forked and only the SIGCHLD handler writes g_reaped, so neither needs a
 * read-modify-write that a signal could tear. */
extern volatile sig_atomic_t g_forked;
extern volatile sig_atomic_t g_reaped;

/* Write end of the running event loop's self-pipe, or -1. Signal handlers
 * write a byte to it so a loop that is about to sleep wakes up and notices
 * g_stop or a reaped child; checking a flag alone would leave a window. */
extern volatile int g_wake_fd;
void wake_loop(void);

/* Threads that must all see a stop signal in blocking --proto both. */
void register_stop_thread(pthread_t t);

/* Whether the configured limits apply, given which sockets are open. */
int tcp_limited(const struct srv_cfg *c, int lfd);
int udp_limited(const struct srv_cfg *c, int ufd);

/* Prints ACCEPT PEER for a fresh connection. */
void report_accept(int fd);

/* Echo one TCP connection with blocking read/write until EOF. */
void echo_blocking(int fd);

/* --fork: hands fd to a new child that echoes it and exits. The child
 * closes close_fds (the server's own sockets) first. The caller still closes
 * its copy of fd. Returns -1 if fork failed. */
int fork_echo_child(int fd, const int *close_fds, int nclose);

/* For --fork: reap-on-SIGCHLD handler. */
void install_sigchld_reaper(void);

enum loop_end serve_blocking(const struct srv_cfg *c, int lfd, int ufd);
enum loop_end serve_events(const struct srv_cfg *c, int lfd, int ufd);

#endif
