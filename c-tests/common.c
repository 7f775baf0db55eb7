/* common.c - implementation of the helpers declared in common.h, shared by
 * echo-server and echo-client. */
#define _GNU_SOURCE
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t g_stop;
size_t g_io_size = IO_BUF;
size_t g_dgram_cap = IO_BUF;

uint64_t now_us(void)
{
	struct timespec ts;

	/* Monotonic so that NTP steps never show up as negative timings. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int parse_ipv4(const char *s, struct in_addr *out)
{
	return inet_pton(AF_INET, s, out) == 1 ? 0 : -1;
}

int parse_ipport(const char *s, struct sockaddr_in *out)
{
	char host[INET_ADDRSTRLEN];
	const char *colon = strrchr(s, ':');
	size_t hlen;
	long port;

	if (colon == NULL)
		return -1;
	hlen = (size_t)(colon - s);
	if (hlen == 0 || hlen >= sizeof host)
		return -1;
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	memset(out, 0, sizeof *out);
	out->sin_family = AF_INET;
	if (parse_ipv4(host, &out->sin_addr) < 0)
		return -1;
	/* Port 0 is no place to connect to. */
	if (parse_long(colon + 1, 1, 65535, &port) < 0)
		return -1;
	out->sin_port = htons((uint16_t)port);
	return 0;
}

void fmt_addr(const struct sockaddr_in *sa, char *buf, size_t len)
{
	char ip[INET_ADDRSTRLEN];

	if (sa->sin_family != AF_INET ||
	    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip) == NULL) {
		snprintf(buf, len, "?");
		return;
	}
	snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

int sock_addr_str(int fd, int peer, char *buf, size_t len)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	int rc;

	memset(&sa, 0, sizeof sa);
	rc = peer ? getpeername(fd, (struct sockaddr *)&sa, &sl)
		  : getsockname(fd, (struct sockaddr *)&sa, &sl);
	if (rc < 0) {
		snprintf(buf, len, "?");
		return -1;
	}
	fmt_addr(&sa, buf, len);
	return 0;
}

void say(const char *fmt, ...)
{
	va_list ap;

	flockfile(stdout);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	funlockfile(stdout);
}

const char *errno_name(int e)
{
	const char *n = strerrorname_np(e);

	return n != NULL ? n : "EUNKNOWN";
}

int set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -1;
	fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
	return fcntl(fd, F_SETFL, fl);
}

int set_cloexec(int fd, int on)
{
	int fl = fcntl(fd, F_GETFD);

	if (fl < 0)
		return -1;
	fl = on ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC);
	return fcntl(fd, F_SETFD, fl);
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR && !g_stop)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

void on_signal(int sig, void (*fn)(int), int restart)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = fn;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = restart ? SA_RESTART : 0;
	sigaction(sig, &sa, NULL);
}
