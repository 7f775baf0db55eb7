/* client.h - configuration and internal interfaces of echo-client, split
 * across echo-client.c (options, threads, summary), client-tcp.c and
 * client-udp.c (one measured run each). */
#ifndef GCB_CTESTS_CLIENT_H
#define GCB_CTESTS_CLIENT_H

#include <netinet/in.h>
#include <stdint.h>

struct cli_cfg {
	int udp;
	struct sockaddr_in dst;
	int has_bind;
	struct in_addr bind_ip;
	uint64_t bytes;     /* payload per round */
	long rounds, runs, parallel;
	int nonblock, udp_connected, allow_loss;
	int timeout_ms;
};

struct run_result {
	int measured;       /* both phases timed: the RUN line is printed */
	int ok;             /* counted in the SUMMARY means */
	int code;           /* contribution to the exit code: 0, 1 or 3 */
	int abort;          /* this thread stops running further runs */
	uint64_t conn_us, data_us, bytes;
	long lost, reordered;
};

/* Exit codes, as documented in --help. */
enum { EXIT_DATA = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

/* Echoed data is a function of run, round and offset only, so a byte that
 * comes back in the wrong place or from the wrong run is caught. */
static inline unsigned char pat_byte(long run, long round, uint64_t off)
{
	uint64_t seed = (uint64_t)run * 1000003u + (uint64_t)round * 7919u;

	return (unsigned char)(((seed + off) * 31u) % 251u);
}

void pat_fill(unsigned char *p, long run, long round, uint64_t off, size_t n);

/* Compares n received bytes that start at stream offset off of a round;
 * prints the MISMATCH line and returns -1 on the first wrong byte. */
int pat_check(const unsigned char *p, size_t n, long run, long round,
	      uint64_t off);

/* socket() plus the options every run wants: --bind, O_NONBLOCK. */
int cli_socket(const struct cli_cfg *c, int type);

/* poll() for ev on fd for at most timeout_ms, restarting after EINTR with
 * what is left. 1 ready, 0 timed out, -1 error. */
int wait_fd(int fd, short ev, int timeout_ms);

void connect_failed(int err, const char *what);
void print_endpoints(int fd);

void tcp_run(const struct cli_cfg *c, long run, int first,
	     struct run_result *res);
void udp_run(const struct cli_cfg *c, long run, int first,
	     struct run_result *res);

#endif
