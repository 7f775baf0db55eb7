/* common.h - helpers shared by echo-server and echo-client: option parsing,
 * address formatting, line output, fd flags and EINTR-safe I/O. These
 * programs stand in for legacy executables, so they use plain BSD sockets and
 * libc only and must never link the shim. */
#ifndef GCB_CTESTS_COMMON_H
#define GCB_CTESTS_COMMON_H

#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* 64 KiB: the largest read either program asks for and the UDP datagram cap. */
#define IO_BUF 65536

/* Set by SIGTERM/SIGINT handlers; every blocking loop checks it after EINTR. */
extern volatile sig_atomic_t g_stop;

/* Read lengths live in variables defined in common.c, out of the callers'
 * translation units: with a buffer of known size and a length the compiler
 * cannot fold, a -D_FORTIFY_SOURCE=2 build calls __read_chk, __recv_chk and
 * __recvfrom_chk, which the shim has to interpose as well. */
extern size_t g_io_size;   /* TCP bytes per read call (server --io-size) */
extern size_t g_dgram_cap; /* receive room for one UDP datagram */

uint64_t now_us(void);

/* Strict parsers: they return 0 on success and -1 on any malformed input,
 * so a typo on the command line is a usage error rather than a silent 0. */
int parse_long(const char *s, long min, long max, long *out);
int parse_ipv4(const char *s, struct in_addr *out);
int parse_ipport(const char *s, struct sockaddr_in *out);

/* "IP:PORT"; buf needs at least ADDR_STR bytes. */
#define ADDR_STR 32
void fmt_addr(const struct sockaddr_in *sa, char *buf, size_t len);
/* getsockname (peer == 0) or getpeername (peer != 0) formatted as IP:PORT;
 * returns -1 and "?" when the call fails. */
int sock_addr_str(int fd, int peer, char *buf, size_t len);

/* One complete line on stdout, flushed at once: tests read these lines from
 * a pipe while the program runs, and threads must not interleave them. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* errno as its symbolic name ("ECONNREFUSED"), for machine-readable lines. */
const char *errno_name(int e);

int set_nonblock(int fd, int on);
int set_cloexec(int fd, int on);

/* Blocking send of the whole buffer. Retries EINTR unless g_stop is set,
 * so a server told to stop does not hang on a peer that never reads. */
int write_all(int fd, const void *buf, size_t len);

/* sigaction wrapper. Stop handlers go in without SA_RESTART so that blocking
 * calls return EINTR and the loops get to look at g_stop. */
void on_signal(int sig, void (*fn)(int), int restart);

#endif
