/* srv-events.c - echo-server's single-threaded event loops over non-blocking
 * fds: select, poll, epoll (level-triggered), epoll-et (edge-triggered) and
 * the busy-polling nonblock mode. One loop serves the listener, the UDP
 * socket and every accepted connection, the way many legacy daemons do. */
#define _GNU_SOURCE
#include "common.h"
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

/* poll's array is static so its size is known at compile time and a
 * fortified build calls __poll_chk. */
#define MAX_POLL 4096

struct conn {
	int fd;
	int dead;       /* closed at the end of the iteration, not mid-batch */
	uint32_t ev;    /* epoll LT: events registered now */
	char *pend;     /* echo bytes the socket did not take yet */
	size_t poff, plen;
};

struct loop {
	const struct srv_cfg *c;
	enum srv_mode mode;
	int lfd, ufd, wake_r, wake_w, epfd;
	int listening, udp_on;
	struct conn **v;
	size_t n, cap;
	long accepted, echoed;
	/* A datagram whose echo met a full send buffer waits here, and no
	 * other is read until it has gone: that keeps replies in order. */
	int upending;
	uint32_t uev;   /* epoll LT: events registered for the UDP socket */
	size_t ulen;
	struct sockaddr_in upeer;
	socklen_t upeerlen;
};

/* Reads land in one shared scratch buffer; a connection gets memory of its
 * own only for the part of an echo its socket would not take. */
static char rbuf[IO_BUF];
static char ubuf[IO_BUF];
static struct pollfd pfds[MAX_POLL];
static struct conn *pconn[MAX_POLL];
/* epoll tags for the fds that are not connections */
static char tag_listen, tag_udp, tag_wake;

static void ep_set(struct loop *L, int op, int fd, uint32_t ev, void *ptr)
{
	struct epoll_event e;

	memset(&e, 0, sizeof e);
	e.events = ev;
	e.data.ptr = ptr;
	if (epoll_ctl(L->epfd, op, fd, &e) < 0 && op != EPOLL_CTL_DEL)
		perror("echo-server: epoll_ctl");
}

static int edge(const struct loop *L)
{
	return L->mode == MODE_EPOLL_ET;
}

static void stop_listening(struct loop *L)
{
	if (L->listening && L->epfd >= 0)
		ep_set(L, EPOLL_CTL_DEL, L->lfd, 0, NULL);
	L->listening = 0;
}

static void stop_udp(struct loop *L)
{
	if (L->udp_on && L->epfd >= 0)
		ep_set(L, EPOLL_CTL_DEL, L->ufd, 0, NULL);
	L->udp_on = 0;
}

static ssize_t conn_read(const struct loop *L, int fd)
{
	/* nonblock mode uses read(), the others recv(), so both fortified
	 * entry points get exercised. */
	if (L->mode == MODE_NONBLOCK)
		return read(fd, rbuf, g_io_size);
	return recv(fd, rbuf, g_io_size, 0);
}

/* Moves bytes on one connection until the socket says EAGAIN (edge mode
 * must get there, or no further edge would come) or, level-triggered, after
 * one read. Returns whether anything happened, for the busy-poll mode. */
static int conn_pump(struct loop *L, struct conn *c, int drain)
{
	int progress = 0;

	for (;;) {
		ssize_t r, w;
		size_t sent = 0;

		if (c->plen > c->poff) {
			w = send(c->fd, c->pend + c->poff, c->plen - c->poff,
				 MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					return progress;
				c->dead = 1;
				return 1;
			}
			progress = 1;
			c->poff += (size_t)w;
			if (c->poff < c->plen)
				continue;
			free(c->pend);
			c->pend = NULL;
			c->poff = c->plen = 0;
			if (!drain)
				return progress;
		}
		r = conn_read(L, c->fd);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return progress;
			c->dead = 1;
			return 1;
		}
		if (r == 0) {
			/* Half-close with nothing left to echo: done. */
			c->dead = 1;
			return 1;
		}
		progress = 1;
		while (sent < (size_t)r) {
			w = send(c->fd, rbuf + sent, (size_t)r - sent,
				 MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			if (w < 0) {
				c->dead = 1;
				return 1;
			}
			sent += (size_t)w;
		}
		if (sent < (size_t)r) {
			c->plen = (size_t)r - sent;
			c->pend = malloc(c->plen);
			if (c->pend == NULL) {
				c->dead = 1;
				return 1;
			}
			memcpy(c->pend, rbuf + sent, c->plen);
			return progress; /* wait for writability */
		}
		if (!drain)
			return progress;
	}
}

/* Level-triggered epoll watches either input or output, never both: a
 * connection with unsent echo must not read more (backpressure). */
static void conn_rearm(struct loop *L, struct conn *c)
{
	uint32_t want;

	if (L->mode != MODE_EPOLL || c->dead)
		return;
	want = c->plen > c->poff ? EPOLLOUT : EPOLLIN;
	if (want != c->ev) {
		ep_set(L, EPOLL_CTL_MOD, c->fd, want, c);
		c->ev = want;
	}
}

static int add_conn(struct loop *L, int fd)
{
	struct conn *c;

	if (L->n == L->cap) {
		size_t cap = L->cap ? L->cap * 2 : 64;
		struct conn **v = realloc(L->v, cap * sizeof *v);

		if (v == NULL)
			return -1;
		L->v = v;
		L->cap = cap;
	}
	c = calloc(1, sizeof *c);
	if (c == NULL)
		return -1;
	c->fd = fd;
	L->v[L->n++] = c;
	if (L->epfd >= 0) {
		c->ev = edge(L) ? EPOLLIN | EPOLLOUT | EPOLLET : EPOLLIN;
		ep_set(L, EPOLL_CTL_ADD, fd, c->ev, c);
	}
	return 0;
}

static int fits_mode(const struct loop *L, int fd)
{
	if (L->mode == MODE_SELECT && fd >= FD_SETSIZE)
		return 0;
	if (L->mode == MODE_POLL && L->n + 4 > MAX_POLL)
		return 0;
	return 1;
}

static void do_accept(struct loop *L)
{
	int mine[5] = {L->lfd, L->ufd, L->wake_r, L->wake_w, L->epfd};

	while (L->listening) {
		int fd;

		if (tcp_limited(L->c, L->lfd) && L->accepted >= L->c->max_conns) {
			stop_listening(L);
			return;
		}
		/* Edge mode takes the accept4 path, the others the classic
		 * accept + fcntl, so the shim sees both. */
		if (edge(L))
			fd = accept4(L->lfd, NULL, NULL,
				     SOCK_NONBLOCK | SOCK_CLOEXEC);
		else
			fd = accept(L->lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EPROTO)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			perror("echo-server: accept");
			/* The listener stays readable; back off, not spin. */
			usleep(10000);
			return;
		}
		L->accepted++;
		report_accept(fd);
		if (L->c->fork_per_conn) {
			fork_echo_child(fd, mine, 5);
			close(fd);
			continue;
		}
		if ((!edge(L) && set_nonblock(fd, 1) < 0) || !fits_mode(L, fd) ||
		    add_conn(L, fd) < 0) {
			fprintf(stderr, "echo-server: cannot serve fd %d\n", fd);
			close(fd);
		}
	}
}

/* Returns whether a datagram moved. */
static int udp_service(struct loop *L, int drain)
{
	int progress = 0;

	while (L->udp_on) {
		ssize_t w;

		if (!L->upending) {
			ssize_t r;

			L->upeerlen = sizeof L->upeer;
			r = recvfrom(L->ufd, ubuf, g_dgram_cap, 0,
				     (struct sockaddr *)&L->upeer, &L->upeerlen);
			if (r < 0) {
				if (errno == EINTR || errno == ECONNREFUSED)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK)
					perror("echo-server: recvfrom");
				return progress;
			}
			L->ulen = (size_t)r;
			L->upending = 1;
			progress = 1;
		}
		w = sendto(L->ufd, ubuf, L->ulen, 0,
			   (struct sockaddr *)&L->upeer, L->upeerlen);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == ENOBUFS)
				return progress;
			/* Unreachable sender: the datagram is dropped, as
			 * the network would have done. */
			perror("echo-server: sendto");
		}
		L->upending = 0;
		L->echoed++;
		progress = 1;
		if (udp_limited(L->c, L->ufd) && L->echoed >= L->c->max_dgrams) {
			stop_udp(L);
			break;
		}
		if (!drain)
			break;
	}
	if (L->mode == MODE_EPOLL && L->udp_on &&
	    L->uev != (L->upending ? EPOLLOUT : EPOLLIN)) {
		L->uev = L->upending ? EPOLLOUT : EPOLLIN;
		ep_set(L, EPOLL_CTL_MOD, L->ufd, L->uev, &tag_udp);
	}
	return progress;
}

static void drain_wake(struct loop *L)
{
	char junk[64];

	while (read(L->wake_r, junk, sizeof junk) > 0)
		;
}

static int step_select(struct loop *L)
{
	fd_set rf, wf;
	int maxfd = L->wake_r, r;
	size_t i, n0 = L->n;

	FD_ZERO(&rf);
	FD_ZERO(&wf);
	FD_SET(L->wake_r, &rf);
	if (L->listening) {
		FD_SET(L->lfd, &rf);
		maxfd = L->lfd > maxfd ? L->lfd : maxfd;
	}
	if (L->udp_on) {
		FD_SET(L->ufd, L->upending ? &wf : &rf);
		maxfd = L->ufd > maxfd ? L->ufd : maxfd;
	}
	for (i = 0; i < n0; i++) {
		struct conn *c = L->v[i];

		FD_SET(c->fd, c->plen > c->poff ? &wf : &rf);
		maxfd = c->fd > maxfd ? c->fd : maxfd;
	}
	r = select(maxfd + 1, &rf, &wf, NULL, NULL);
	if (r < 0)
		return errno == EINTR ? 0 : -1;
	if (FD_ISSET(L->wake_r, &rf))
		drain_wake(L);
	for (i = 0; i < n0; i++) {
		struct conn *c = L->v[i];

		if (FD_ISSET(c->fd, &rf) || FD_ISSET(c->fd, &wf))
			conn_pump(L, c, 0);
	}
	if (L->udp_on && (FD_ISSET(L->ufd, &rf) || FD_ISSET(L->ufd, &wf)))
		udp_service(L, 0);
	/* Accept last: fds of new connections were never in these sets. */
	if (L->listening && FD_ISSET(L->lfd, &rf))
		do_accept(L);
	return 0;
}

static int step_poll(struct loop *L)
{
	nfds_t nfds = 0, first, i;
	int r, li = -1, ui = -1;
	size_t k;

	pfds[nfds].fd = L->wake_r;
	pfds[nfds++].events = POLLIN;
	if (L->listening) {
		li = (int)nfds;
		pfds[nfds].fd = L->lfd;
		pfds[nfds++].events = POLLIN;
	}
	if (L->udp_on) {
		ui = (int)nfds;
		pfds[nfds].fd = L->ufd;
		pfds[nfds++].events = L->upending ? POLLOUT : POLLIN;
	}
	first = nfds;
	/* fits_mode() keeps the table within MAX_POLL when connections are
	 * accepted; the fortified poll() re-checks that at run time. */
	for (k = 0; k < L->n; k++) {
		struct conn *c = L->v[k];

		pconn[nfds] = c;
		pfds[nfds].fd = c->fd;
		pfds[nfds++].events = c->plen > c->poff ? POLLOUT : POLLIN;
	}
	r = poll(pfds, nfds, -1);
	if (r < 0)
		return errno == EINTR ? 0 : -1;
	if (pfds[0].revents)
		drain_wake(L);
	for (i = first; i < nfds; i++)
		if (pfds[i].revents)
			conn_pump(L, pconn[i], 0);
	if (ui >= 0 && pfds[ui].revents)
		udp_service(L, 0);
	if (li >= 0 && pfds[li].revents)
		do_accept(L);
	return 0;
}

static int step_epoll(struct loop *L)
{
	struct epoll_event evs[64];
	int n, i, et = edge(L);

	n = epoll_wait(L->epfd, evs, 64, -1);
	if (n < 0)
		return errno == EINTR ? 0 : -1;
	for (i = 0; i < n; i++) {
		void *p = evs[i].data.ptr;

		if (p == &tag_wake) {
			drain_wake(L);
		} else if (p == &tag_listen) {
			do_accept(L);
		} else if (p == &tag_udp) {
			udp_service(L, et);
		} else {
			struct conn *c = p;

			/* Closed ones stay allocated until the batch is
			 * over, so a stale pointer here is still valid. */
			if (c->dead)
				continue;
			conn_pump(L, c, et);
			conn_rearm(L, c);
		}
	}
	return 0;
}

static int step_nonblock(struct loop *L)
{
	long before = L->accepted;
	int progress = 0;
	size_t i, n0 = L->n;

	for (i = 0; i < n0; i++)
		progress |= conn_pump(L, L->v[i], 0);
	if (L->udp_on)
		progress |= udp_service(L, 0);
	if (L->listening)
		do_accept(L);
	if (L->accepted != before)
		progress = 1;
	/* The documented busy-poll: nothing to do means a 1 ms nap, never a
	 * hot spin. */
	if (!progress)
		usleep(1000);
	return 0;
}

static void reap_dead(struct loop *L)
{
	size_t i, j = 0;

	for (i = 0; i < L->n; i++) {
		struct conn *c = L->v[i];

		if (!c->dead) {
			L->v[j++] = c;
			continue;
		}
		if (L->epfd >= 0)
			ep_set(L, EPOLL_CTL_DEL, c->fd, 0, NULL);
		close(c->fd);
		free(c->pend);
		free(c);
	}
	L->n = j;
}

static int limits_done(const struct loop *L)
{
	int tl = tcp_limited(L->c, L->lfd), ul = udp_limited(L->c, L->ufd);

	if (!tl && !ul)
		return 0;
	if (tl && (L->accepted < L->c->max_conns || L->n > 0 ||
		   g_reaped < g_forked))
		return 0;
	if (ul && L->echoed < L->c->max_dgrams)
		return 0;
	return 1;
}

enum loop_end serve_events(const struct srv_cfg *c, int lfd, int ufd)
{
	struct loop L;
	enum loop_end end = LOOP_STOP;
	int pipefd[2] = {-1, -1};
	size_t i;

	memset(&L, 0, sizeof L);
	L.c = c;
	L.mode = c->mode;
	L.lfd = lfd;
	L.ufd = ufd;
	L.epfd = -1;
	L.listening = lfd >= 0;
	L.udp_on = ufd >= 0;
	if (L.mode != MODE_NONBLOCK) {
		if (pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
			perror("echo-server: pipe2");
			return LOOP_ERROR;
		}
		g_wake_fd = pipefd[1];
	}
	L.wake_r = pipefd[0];
	L.wake_w = pipefd[1];
	if (L.mode == MODE_SELECT &&
	    (lfd >= FD_SETSIZE || ufd >= FD_SETSIZE || L.wake_r >= FD_SETSIZE)) {
		fprintf(stderr, "echo-server: fd beyond FD_SETSIZE for select\n");
		return LOOP_ERROR;
	}
	if (c->fork_per_conn)
		install_sigchld_reaper();
	if ((lfd >= 0 && set_nonblock(lfd, 1) < 0) ||
	    (ufd >= 0 && set_nonblock(ufd, 1) < 0)) {
		perror("echo-server: fcntl");
		return LOOP_ERROR;
	}
	if (L.mode == MODE_EPOLL || L.mode == MODE_EPOLL_ET) {
		uint32_t et = edge(&L) ? EPOLLET : 0;

		L.epfd = epoll_create1(EPOLL_CLOEXEC);
		if (L.epfd < 0) {
			perror("echo-server: epoll_create1");
			return LOOP_ERROR;
		}
		ep_set(&L, EPOLL_CTL_ADD, L.wake_r, EPOLLIN, &tag_wake);
		if (lfd >= 0)
			ep_set(&L, EPOLL_CTL_ADD, lfd, EPOLLIN | et, &tag_listen);
		if (ufd >= 0) {
			L.uev = et ? EPOLLIN | EPOLLOUT | EPOLLET : EPOLLIN;
			ep_set(&L, EPOLL_CTL_ADD, ufd, L.uev, &tag_udp);
		}
	}

	for (;;) {
		int rc;

		if (g_stop)
			break;
		if (limits_done(&L)) {
			end = LOOP_LIMIT;
			break;
		}
		switch (L.mode) {
		case MODE_SELECT:
			rc = step_select(&L);
			break;
		case MODE_POLL:
			rc = step_poll(&L);
			break;
		case MODE_NONBLOCK:
			rc = step_nonblock(&L);
			break;
		default:
			rc = step_epoll(&L);
			break;
		}
		reap_dead(&L);
		if (rc < 0) {
			perror("echo-server: wait");
			end = LOOP_ERROR;
			break;
		}
	}

	g_wake_fd = -1;
	for (i = 0; i < L.n; i++) {
		close(L.v[i]->fd);
		free(L.v[i]->pend);
		free(L.v[i]);
	}
	free(L.v);
	if (L.epfd >= 0)
		close(L.epfd);
	if (pipefd[0] >= 0) {
		close(pipefd[0]);
		close(pipefd[1]);
	}
	return end;
}
