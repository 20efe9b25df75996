// The load generator and echo peer of npm run bench:dataplane (docs/performance.md,
// "Kernel data plane benchmark"). One program so that the relay runs and the direct
// run send and receive exactly the same way: the only difference is whether each
// datagram carries a ChannelData header (RFC 8656 §12.4) and goes to the server, or
// goes straight to the peer.
//
//   loadgen echo  --bind IP --port P
//   loadgen probe --server IP:PORT
//   loadgen load  --mode turn|direct --server IP:PORT --peer IP:PORT --bind IP
//                 --sessions N --rate MSGS_PER_S --count MSGS --size BYTES
//                 [--warmup MSGS] [--user U --password PW]
//
// load: N UDP sockets (one allocation each in turn mode: Allocate with the 401 round
// trip, then ChannelBind 0x4000 to the peer, RFC 8656 §7, §11), each connect()ed to
// where it sends. It prints "ready" and waits for "go" on stdin, so that the caller
// samples CPU around the load only; then it sends COUNT messages at RATE in total,
// message i from session i % N at t0 + i/RATE, each carrying its sequence number
// and send time, receives the echoes, waits for stragglers, prints one JSON line
// with the counts and the round-trip-time percentiles (1 us resolution) and waits
// for EOF on stdin, so that it is still alive when the caller takes its second sample.
//
// echo: one socket; every datagram goes back to where it came from (recvmmsg and
// sendmmsg in batches, so that the peer is not what limits the rate).
//
// probe: one STUN Binding request; exit 0 if a success response comes back.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <openssl/md5.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x2112A442u
#define CHANNEL 0x4000
#define MAX_SESSIONS 1024
#define MAX_SIZE 1400
#define BATCH 64
#define HIST_US 1000000
#define SOCKET_BUFFER (4 * 1024 * 1024)
#define DRAIN_IDLE_NS 500000000ull
#define DRAIN_MAX_NS 3000000000ull

static const char *arg(int argc, char **argv, const char *name, const char *fallback) {
	for (int i = 2; i + 1 < argc; i++)
		if (strcmp(argv[i], name) == 0) return argv[i + 1];
	if (fallback == NULL) {
		fprintf(stderr, "loadgen: %s is required\n", name);
		exit(2);
	}
	return fallback;
}

static long num(int argc, char **argv, const char *name, const char *fallback, long min, long max) {
	const char *s = arg(argc, argv, name, fallback);
	char *end;
	long v = strtol(s, &end, 10);
	if (*end != 0 || v < min || v > max) {
		fprintf(stderr, "loadgen: %s '%s': an integer from %ld to %ld\n", name, s, min, max);
		exit(2);
	}
	return v;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "loadgen: '%s' is not an IPv4 address\n", ip);
		exit(2);
	}
	return a;
}

static struct sockaddr_in endpoint(const char *text) {
	char ip[64];
	const char *colon = strrchr(text, ':');
	if (colon == NULL || (size_t)(colon - text) >= sizeof ip) {
		fprintf(stderr, "loadgen: '%s' is not IP:PORT\n", text);
		exit(2);
	}
	memcpy(ip, text, colon - text);
	ip[colon - text] = 0;
	return addr_of(ip, atoi(colon + 1));
}

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int udp_socket(const char *bind_ip, int port) {
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		perror("loadgen: socket");
		exit(1);
	}
	int size = SOCKET_BUFFER;
	// Same buffers for every socket in every run; FORCE ignores net.core.*mem_max (root).
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
	struct sockaddr_in a = addr_of(bind_ip, port);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("loadgen: bind");
		exit(1);
	}
	return fd;
}

// ---- STUN requests (RFC 8489 §5, §14) for the control plane: not timed ----

struct msg {
	uint8_t b[1024];
	int len;
};

static void put16(uint8_t *p, unsigned v) {
	p[0] = v >> 8;
	p[1] = v & 255;
}

static void put32(uint8_t *p, uint32_t v) {
	put16(p, v >> 16);
	put16(p + 2, v & 0xffff);
}

static void stun_begin(struct msg *m, unsigned type) {
	memset(m, 0, sizeof *m);
	put16(m->b, type);
	put32(m->b + 4, MAGIC);
	if (getrandom(m->b + 8, 12, 0) != 12) exit(1);
	m->len = 20;
}

static void stun_attr(struct msg *m, unsigned type, const void *value, unsigned n) {
	put16(m->b + m->len, type);
	put16(m->b + m->len + 2, n);
	memcpy(m->b + m->len + 4, value, n);
	m->len += 4 + ((n + 3) & ~3u);
	put16(m->b + 2, m->len - 20);
}

// MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 over the message with the length
// already counting the attribute.
static void stun_integrity(struct msg *m, const uint8_t key[16]) {
	put16(m->b + 2, m->len - 20 + 24);
	uint8_t mac[20];
	unsigned mac_len = 0;
	HMAC(EVP_sha1(), key, 16, m->b, m->len, mac, &mac_len);
	stun_attr(m, 0x0008, mac, 20);
}

static void xor_address(uint8_t out[8], const struct sockaddr_in *a) {
	out[0] = 0;
	out[1] = 1;
	put16(out + 2, ntohs(a->sin_port) ^ (MAGIC >> 16));
	put32(out + 4, ntohl(a->sin_addr.s_addr) ^ MAGIC);
}

struct answer {
	unsigned type;
	int error;
	char realm[256];
	char nonce[256];
	struct sockaddr_in relayed;
};

static void copy_text(char *out, const uint8_t *v, unsigned n) {
	if (n > 255) n = 255;
	memcpy(out, v, n);
	out[n] = 0;
}

// Sends the request and waits for the response with its transaction id (retransmits
// RFC 8489 §6.2.1 style, but with a short fixed timeout: the server is one veth away).
static int transact(int fd, const struct msg *req, struct answer *ans) {
	uint8_t buf[2048];
	for (int attempt = 0; attempt < 8; attempt++) {
		if (send(fd, req->b, req->len, 0) < 0) return -1;
		uint64_t deadline = now_ns() + 250000000ull;
		for (;;) {
			int64_t left = (int64_t)(deadline - now_ns()) / 1000000;
			if (left <= 0) break;
			struct pollfd p = {.fd = fd, .events = POLLIN};
			if (poll(&p, 1, (int)left) <= 0) continue;
			ssize_t n = recv(fd, buf, sizeof buf, 0);
			if (n < 20 || memcmp(buf + 8, req->b + 8, 12) != 0) continue;
			memset(ans, 0, sizeof *ans);
			ans->type = (buf[0] << 8) | buf[1];
			for (int pos = 20; pos + 4 <= n;) {
				unsigned t = (buf[pos] << 8) | buf[pos + 1];
				unsigned len = (buf[pos + 2] << 8) | buf[pos + 3];
				const uint8_t *v = buf + pos + 4;
				if (pos + 4 + (int)len > n) break;
				if (t == 0x0009 && len >= 4) ans->error = (v[2] & 7) * 100 + v[3];
				if (t == 0x0014) copy_text(ans->realm, v, len);
				if (t == 0x0015) copy_text(ans->nonce, v, len);
				if (t == 0x0016 && len == 8) {
					ans->relayed.sin_family = AF_INET;
					ans->relayed.sin_port = htons(((v[2] << 8) | v[3]) ^ (MAGIC >> 16));
					ans->relayed.sin_addr.s_addr = htonl((((uint32_t)v[4] << 24) | (v[5] << 16) | (v[6] << 8) | v[7]) ^ MAGIC);
				}
				pos += 4 + ((len + 3) & ~3u);
			}
			return 0;
		}
	}
	errno = ETIMEDOUT;
	return -1;
}

static void auth_attrs(struct msg *m, const char *user, const char *realm, const char *nonce) {
	stun_attr(m, 0x0006, user, strlen(user));
	stun_attr(m, 0x0014, realm, strlen(realm));
	stun_attr(m, 0x0015, nonce, strlen(nonce));
}

// Allocate (with the 401 round trip, RFC 8656 §7.1, RFC 8489 §9.2) and ChannelBind
// CHANNEL to the peer (RFC 8656 §11) on this socket, connected to the server.
static void turn_session(int fd, int index, const struct sockaddr_in *peer, const char *user, const char *password) {
	struct msg m;
	struct answer a;
	const uint8_t udp[4] = {17, 0, 0, 0};
	stun_begin(&m, 0x0003);
	stun_attr(&m, 0x0019, udp, 4);
	if (transact(fd, &m, &a) < 0 || a.error != 401 || a.realm[0] == 0) {
		fprintf(stderr, "loadgen: session %d: Allocate got no 401 (type 0x%04x, error %d)\n", index, a.type, a.error);
		exit(1);
	}
	char realm[256], nonce[256], text[600];
	strcpy(realm, a.realm);
	strcpy(nonce, a.nonce);
	snprintf(text, sizeof text, "%s:%s:%s", user, realm, password);
	uint8_t key[16];
	MD5((const uint8_t *)text, strlen(text), key);
	stun_begin(&m, 0x0003);
	stun_attr(&m, 0x0019, udp, 4);
	auth_attrs(&m, user, realm, nonce);
	stun_integrity(&m, key);
	if (transact(fd, &m, &a) < 0 || a.type != 0x0103) {
		fprintf(stderr, "loadgen: session %d: Allocate failed (type 0x%04x, error %d)\n", index, a.type, a.error);
		exit(1);
	}
	char relayed[32];
	inet_ntop(AF_INET, &a.relayed.sin_addr, relayed, sizeof relayed);
	const int relayed_port = ntohs(a.relayed.sin_port);
	stun_begin(&m, 0x0009);
	uint8_t channel[4] = {CHANNEL >> 8, CHANNEL & 255, 0, 0};
	stun_attr(&m, 0x000C, channel, 4);
	uint8_t xpeer[8];
	xor_address(xpeer, peer);
	stun_attr(&m, 0x0012, xpeer, 8);
	auth_attrs(&m, user, realm, nonce);
	stun_integrity(&m, key);
	if (transact(fd, &m, &a) < 0 || a.type != 0x0109) {
		fprintf(stderr, "loadgen: session %d: ChannelBind failed (type 0x%04x, error %d)\n", index, a.type, a.error);
		exit(1);
	}
	if (index == 0) fprintf(stderr, "loadgen: session 0 relayed address %s:%d\n", relayed, relayed_port);
}

// ---- probe ----

static int probe(int argc, char **argv) {
	struct sockaddr_in server = endpoint(arg(argc, argv, "--server", NULL));
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&server, sizeof server) < 0) return 1;
	struct msg m;
	stun_begin(&m, 0x0001);
	uint8_t buf[1024];
	if (send(fd, m.b, m.len, 0) < 0) return 1;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	if (poll(&p, 1, 300) <= 0) return 1;
	ssize_t n = recv(fd, buf, sizeof buf, 0);
	return n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 ? 0 : 1;
}

// ---- echo ----

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
	(void)sig;
	stop = 1;
}

static int echo(int argc, char **argv) {
	int fd = udp_socket(arg(argc, argv, "--bind", NULL), (int)num(argc, argv, "--port", NULL, 1, 65535));
	static uint8_t bufs[BATCH][2048];
	static struct sockaddr_in from[BATCH];
	static struct iovec iov[BATCH];
	static struct mmsghdr msgs[BATCH];
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("ready\n");
	fflush(stdout);
	unsigned long long echoed = 0;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	while (!stop) {
		if (poll(&p, 1, 200) <= 0) continue;
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = sizeof bufs[i]};
			msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1};
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0) continue;
		for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
		for (int done = 0; done < n;) {
			int s = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
			if (s <= 0) break; // a full send buffer: the echo is lost, and counted as lost by the sender
			done += s;
		}
		echoed += n;
	}
	fprintf(stderr, "loadgen echo: %llu datagrams echoed\n", echoed);
	return 0;
}

// ---- load ----

struct load {
	int turn;
	int sessions;
	int fds[MAX_SESSIONS];
	long rate;
	long count;
	long size;
	long warmup;
	uint32_t *hist;
	uint64_t over_max_us;
	uint64_t sent, received, send_errors, malformed;
	uint64_t max_lag_ns;
};

static void receive_from(struct load *L, int fd) {
	static uint8_t bufs[BATCH][2048];
	static struct iovec iov[BATCH];
	static struct mmsghdr msgs[BATCH];
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = sizeof bufs[i]};
			msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0) return;
		uint64_t now = now_ns();
		int offset = L->turn ? 4 : 0;
		for (int i = 0; i < n; i++) {
			const uint8_t *b = bufs[i];
			if ((int)msgs[i].msg_len < offset + 16 || (L->turn && (b[0] & 0xc0) != 0x40)) {
				L->malformed++;
				continue;
			}
			uint64_t seq, t;
			memcpy(&seq, b + offset, 8);
			memcpy(&t, b + offset + 8, 8);
			L->received++;
			if ((long)seq < L->warmup) continue;
			uint64_t us = (now - t) / 1000;
			if (us >= HIST_US) {
				L->over_max_us = us > L->over_max_us ? us : L->over_max_us;
				us = HIST_US - 1;
			}
			L->hist[us]++;
		}
		if (n < BATCH) return;
	}
}

static void poll_once(struct load *L, int ep, uint64_t timeout_ns) {
	struct epoll_event ev[64];
	struct timespec ts = {.tv_sec = timeout_ns / 1000000000ull, .tv_nsec = timeout_ns % 1000000000ull};
	int n = epoll_pwait2(ep, ev, 64, &ts, NULL);
	for (int i = 0; i < n; i++) receive_from(L, L->fds[ev[i].data.u32]);
}

static uint64_t percentile(const struct load *L, uint64_t total, double q) {
	uint64_t want = (uint64_t)(q * (double)total);
	if (want >= total) want = total - 1;
	uint64_t seen = 0;
	for (uint64_t us = 0; us < HIST_US; us++) {
		seen += L->hist[us];
		if (seen > want) return us;
	}
	return HIST_US;
}

static void run_load(struct load *L, int ep) {
	static uint8_t packet[MAX_SIZE + 4];
	int offset = L->turn ? 4 : 0;
	memset(packet, 0, sizeof packet);
	put16(packet, CHANNEL);
	put16(packet + 2, L->size);
	const uint64_t interval = 1000000000ull / L->rate;
	const uint64_t t0 = now_ns();
	uint64_t due = t0;
	uint64_t last_send = t0;
	while ((long)L->sent < L->count) {
		uint64_t now = now_ns();
		for (int burst = 0; (long)L->sent < L->count && due <= now && burst < 256; burst++) {
			if (now - due > L->max_lag_ns) L->max_lag_ns = now - due;
			uint64_t seq = L->sent;
			uint64_t t = now_ns();
			memcpy(packet + offset, &seq, 8);
			memcpy(packet + offset + 8, &t, 8);
			if (send(L->fds[seq % L->sessions], packet, offset + L->size, 0) < 0) L->send_errors++;
			L->sent++;
			last_send = t;
			due = t0 + L->sent * interval;
		}
		now = now_ns();
		// Sleep until the next message is due, but not in slices under 50 us: below
		// that the timer's own cost would dominate, so such messages go in bursts.
		uint64_t wait = due > now ? due - now : 0;
		poll_once(L, ep, wait < 50000 ? 0 : wait);
	}
	uint64_t drain_start = now_ns();
	uint64_t last_seen = drain_start;
	uint64_t before = L->received;
	while (L->received < L->sent) {
		uint64_t now = now_ns();
		if (now - last_seen > DRAIN_IDLE_NS || now - drain_start > DRAIN_MAX_NS) break;
		poll_once(L, ep, 50000000ull);
		if (L->received != before) {
			before = L->received;
			last_seen = now_ns();
		}
	}
	uint64_t timed = 0;
	for (uint64_t us = 0; us < HIST_US; us++) timed += L->hist[us];
	double send_seconds = (double)(last_send - t0) / 1e9;
	double achieved = send_seconds > 0 ? (double)(L->sent - 1) / send_seconds : 0;
	printf("{\"sent\":%llu,\"received\":%llu,\"sendErrors\":%llu,\"malformed\":%llu,\"sendSeconds\":%.6f,"
	       "\"achievedRate\":%.1f,\"maxLagUs\":%.1f,\"rtt\":{\"count\":%llu",
	       (unsigned long long)L->sent, (unsigned long long)L->received, (unsigned long long)L->send_errors,
	       (unsigned long long)L->malformed, send_seconds, achieved, L->max_lag_ns / 1000.0, (unsigned long long)timed);
	if (timed > 0) {
		uint64_t max = L->over_max_us;
		for (uint64_t us = HIST_US; max == 0 && us-- > 0;)
			if (L->hist[us] != 0) max = us;
		printf(",\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,\"max\":%llu", (unsigned long long)percentile(L, timed, 0.5),
		       (unsigned long long)percentile(L, timed, 0.9), (unsigned long long)percentile(L, timed, 0.99), (unsigned long long)max);
	}
	printf("}}\n");
	fflush(stdout);
}

static int load(int argc, char **argv) {
	static struct load L;
	const char *mode = arg(argc, argv, "--mode", NULL);
	L.turn = strcmp(mode, "turn") == 0;
	if (!L.turn && strcmp(mode, "direct") != 0) {
		fprintf(stderr, "loadgen: --mode '%s': turn or direct\n", mode);
		return 2;
	}
	struct sockaddr_in peer = endpoint(arg(argc, argv, "--peer", NULL));
	struct sockaddr_in target = L.turn ? endpoint(arg(argc, argv, "--server", NULL)) : peer;
	const char *bind_ip = arg(argc, argv, "--bind", NULL);
	L.sessions = (int)num(argc, argv, "--sessions", "20", 1, MAX_SESSIONS);
	L.rate = num(argc, argv, "--rate", NULL, 1, 10000000);
	L.count = num(argc, argv, "--count", NULL, 1, 1000000000);
	L.size = num(argc, argv, "--size", "100", 16, MAX_SIZE);
	L.warmup = num(argc, argv, "--warmup", "0", 0, 1000000000);
	L.hist = calloc(HIST_US, sizeof *L.hist);
	int ep = epoll_create1(0);
	for (int i = 0; i < L.sessions; i++) {
		int fd = udp_socket(bind_ip, 0);
		if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
			perror("loadgen: connect");
			return 1;
		}
		if (L.turn) turn_session(fd, i, &peer, arg(argc, argv, "--user", NULL), arg(argc, argv, "--password", NULL));
		L.fds[i] = fd;
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	}
	printf("ready\n");
	fflush(stdout);
	char line[64];
	if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "go", 2) != 0) return 1;
	run_load(&L, ep);
	while (fgets(line, sizeof line, stdin) != NULL) {
	}
	return 0;
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "echo") == 0) return echo(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "probe") == 0) return probe(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "load") == 0) return load(argc, argv);
	fprintf(stderr, "usage: loadgen echo|probe|load ... (see bench/dataplane/loadgen.c)\n");
	return 2;
}
