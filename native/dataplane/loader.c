// SPDX-License-Identifier: MIT
// anyturn-dataplane: loads relay.bpf.o, attaches its relay program at tc
// ingress and its steering program at tc egress (clsact, direct action) of the
// interfaces named in argv, and serves the map writes
// of src/dataplane/kernel/loader.ts on stdin, one command per line, one answer
// line per command (docs/dataplane.md, "The helper's protocol"):
//
//   put c2p|p2c|steer <key hex> <value hex>   -> ok | err <reason>
//   del c2p|p2c|steer <key hex>               -> ok (absent is ok too)
//   zero <stat id>                      -> ok
//   read <stat id>...                   -> ok <id>:<to peer pkts>,<bytes>,<to client pkts>,<bytes> ...
//   totals                              -> ok <reason>=<count> ...
//   ping                                -> ok (every earlier command done: a flush)
//   quit                                -> detaches, exits 0
//
// Start: prints "ready <possible cpus>" or "error <reason>" (and exits 1).
// SIGTERM, SIGINT, stdin EOF and the parent's death (PR_SET_PDEATHSIG) detach
// its filters before it exits. The TypeScript side owns the key and value
// layouts; this program only checks their sizes against the maps in the object.

#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/pkt_cls.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define MAX_IFACES 16
#define MAX_KEY 64

// The reason counters' names, in relay.bpf.c's enum order.
static const char *const REASONS[] = {
	"relayed_to_peer", "relayed_to_client", "expired", "no_route", "no_neighbour", "too_big",
	"malformed",	   "no_checksum",	"checksum_partial", "gso", "error",
	"steered_in",	   "steered_out",	"steer_stray",	    "steer_gso", "steer_too_big",
	"steer_malformed", "bytes_relayed_to_peer", "bytes_relayed_to_client",
};
#define N_REASONS (sizeof(REASONS) / sizeof(REASONS[0]))

struct attached {
	struct bpf_tc_hook hook;
	struct bpf_tc_opts opts;
	int ifindex;
	char name[IF_NAMESIZE];
};

// Each interface twice: ingress (relay, steering in) and egress (steering out).
static struct attached ifaces[MAX_IFACES * 2];
static int n_ifaces;
static volatile sig_atomic_t stopping;
static int ncpus;
static char verifier_tail[512];

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

// libbpf's warnings carry the verifier's log: all of it goes to stderr, and
// its last lines (where the verifier says what it refused) into the error line.
static int on_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char *msg = NULL;
	if (level == LIBBPF_DEBUG || vasprintf(&msg, fmt, args) < 0)
		return 0;
	fputs(msg, stderr);
	char *begin = strstr(msg, "BEGIN PROG LOAD LOG");
	char *end = begin ? strstr(begin, "-- END PROG LOAD LOG") : NULL;
	if (end) {
		while (end > begin && (end[-1] == '\n' || end[-1] == ' '))
			end--;
		char *from = end - (end - begin > 300 ? 300 : end - begin);
		size_t n = (size_t)(end - from);
		memcpy(verifier_tail, from, n);
		verifier_tail[n] = '\0';
		for (char *c = verifier_tail; *c; c++)
			if (*c == '\n' || *c == '\t')
				*c = ' ';
	}
	free(msg);
	return 0;
}

static void detach_all(void)
{
	for (int i = 0; i < n_ifaces; i++) {
		struct bpf_tc_opts opts = {.sz = sizeof(opts), .handle = ifaces[i].opts.handle, .priority = ifaces[i].opts.priority};
		bpf_tc_detach(&ifaces[i].hook, &opts);
	}
	n_ifaces = 0;
}

static int fail(const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	fputs("error ", stdout);
	vfprintf(stdout, fmt, args);
	fputc('\n', stdout);
	va_end(args);
	fflush(stdout);
	detach_all();
	return 1;
}

static const char *permission_hint(int err)
{
	err = err < 0 ? -err : err;
	return err == EPERM || err == EACCES ? " (needs root, or CAP_BPF and CAP_NET_ADMIN)" : "";
}

static int attach(int prog_fd, const char *name, enum bpf_tc_attach_point point)
{
	if (n_ifaces >= MAX_IFACES * 2)
		return fail("too many attachments");
	struct attached *a = &ifaces[n_ifaces];
	int ifindex = (int)if_nametoindex(name);
	if (ifindex == 0)
		return fail("no such interface: %s", name);
	memset(a, 0, sizeof(*a));
	a->hook.sz = sizeof(a->hook);
	a->hook.ifindex = ifindex;
	a->hook.attach_point = point;
	// An existing clsact qdisc (other filters) is kept and shared.
	int err = bpf_tc_hook_create(&a->hook);
	if (err && err != -EEXIST)
		return fail("cannot create the clsact qdisc on %s: %s%s", name, strerror(-err), permission_hint(err));
	a->opts.sz = sizeof(a->opts);
	a->opts.prog_fd = prog_fd;
	// handle and priority 0: the kernel picks free ones, so filters of
	// others stay as they are; libbpf reports them back for the detach.
	err = bpf_tc_attach(&a->hook, &a->opts);
	if (err)
		return fail("cannot attach to %s: %s%s", name, strerror(-err), permission_hint(err));
	a->ifindex = ifindex;
	snprintf(a->name, sizeof(a->name), "%s", name);
	n_ifaces++;
	return 0;
}

static int hex_decode(const char *hex, unsigned char *out, size_t want)
{
	if (!hex || strlen(hex) != want * 2)
		return -1;
	for (size_t i = 0; i < want; i++) {
		unsigned int b;
		if (sscanf(hex + 2 * i, "%2x", &b) != 1)
			return -1;
		out[i] = (unsigned char)b;
	}
	return 0;
}

static struct bpf_map *named_map(struct bpf_object *obj, const char *name)
{
	if (!name || (strcmp(name, "c2p") != 0 && strcmp(name, "p2c") != 0 && strcmp(name, "steer") != 0))
		return NULL;
	return bpf_object__find_map_by_name(obj, name);
}

static void cmd_put_del(struct bpf_object *obj, char *verb)
{
	struct bpf_map *map = named_map(obj, strtok(NULL, " "));
	unsigned char key[MAX_KEY], value[MAX_KEY];
	if (!map) {
		puts("err unknown map");
		return;
	}
	size_t ks = bpf_map__key_size(map), vs = bpf_map__value_size(map);
	if (hex_decode(strtok(NULL, " "), key, ks) < 0) {
		printf("err key of %s must be %zu bytes\n", bpf_map__name(map), ks);
		return;
	}
	int err;
	if (strcmp(verb, "put") == 0) {
		if (hex_decode(strtok(NULL, " "), value, vs) < 0) {
			printf("err value of %s must be %zu bytes\n", bpf_map__name(map), vs);
			return;
		}
		err = bpf_map_update_elem(bpf_map__fd(map), key, value, BPF_ANY);
	} else {
		err = bpf_map_delete_elem(bpf_map__fd(map), key);
		if (err && errno == ENOENT)
			err = 0;
	}
	if (err)
		printf("err %s %s: %s\n", verb, bpf_map__name(map), strerror(errno));
	else
		puts("ok");
}

// The per-entry counters: one struct of four u64 per handle (a plain array, atomic adds).
static void cmd_zero_read(struct bpf_object *obj, char *verb)
{
	int fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "stats"));
	char *tok;
	int zero = strcmp(verb, "zero") == 0;
	fputs("ok", stdout);
	while ((tok = strtok(NULL, " ")) != NULL) {
		__u32 id = (__u32)strtoul(tok, NULL, 10);
		__u64 values[4] = {0, 0, 0, 0};
		if (zero) {
			bpf_map_update_elem(fd, &id, values, BPF_ANY);
			continue;
		}
		bpf_map_lookup_elem(fd, &id, values);
		printf(" %u:%llu,%llu,%llu,%llu", id, (unsigned long long)values[0], (unsigned long long)values[1],
		       (unsigned long long)values[2], (unsigned long long)values[3]);
	}
	putchar('\n');
}

static void cmd_totals(struct bpf_object *obj)
{
	int fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "totals"));
	__u64 *values = calloc((size_t)ncpus, sizeof(__u64));
	if (!values) {
		puts("err out of memory");
		return;
	}
	fputs("ok", stdout);
	for (__u32 r = 0; r < N_REASONS; r++) {
		unsigned long long sum = 0;
		if (bpf_map_lookup_elem(fd, &r, values) == 0)
			for (int c = 0; c < ncpus; c++)
				sum += values[c];
		printf(" %s=%llu", REASONS[r], sum);
	}
	putchar('\n');
	free(values);
}

static void serve(struct bpf_object *obj)
{
	char *line = NULL;
	size_t cap = 0;
	while (!stopping) {
		ssize_t n = getline(&line, &cap, stdin);
		if (n < 0)
			break; // EOF, or EINTR from a signal
		if (n > 0 && line[n - 1] == '\n')
			line[n - 1] = '\0';
		char *verb = strtok(line, " ");
		if (!verb)
			continue;
		if (strcmp(verb, "put") == 0 || strcmp(verb, "del") == 0)
			cmd_put_del(obj, verb);
		else if (strcmp(verb, "zero") == 0 || strcmp(verb, "read") == 0)
			cmd_zero_read(obj, verb);
		else if (strcmp(verb, "totals") == 0)
			cmd_totals(obj);
		else if (strcmp(verb, "ping") == 0)
			puts("ok"); // answered in order: every earlier command is done (flush)
		else if (strcmp(verb, "quit") == 0)
			break;
		else
			printf("err unknown command %s\n", verb);
		fflush(stdout);
	}
	free(line);
}

int main(int argc, char **argv)
{
	pid_t parent = getppid();
	// Die with the process that started us; if it is already gone, go.
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 1;
	struct sigaction sa = {.sa_handler = on_signal}; // no SA_RESTART: getline returns
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	libbpf_set_print(on_libbpf_print);

	if (argc < 4)
		return fail("usage: anyturn-dataplane <relay.bpf.o> <max entries> <interface>...");
	const char *path = argv[1];
	unsigned long max_entries = strtoul(argv[2], NULL, 10);
	if (max_entries == 0 || max_entries > (1UL << 24))
		return fail("max entries must be 1-16777216, not %s", argv[2]);
	if (argc - 3 > MAX_IFACES)
		return fail("at most %d interfaces", MAX_IFACES);
	for (int i = 3; i < argc; i++)
		if (if_nametoindex(argv[i]) == 0)
			return fail("no such interface: %s", argv[i]);

	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	if (!obj)
		return fail("cannot open %s: %s", path, strerror(errno));
	const char *sized[] = {"c2p", "p2c", "stats"};
	for (int i = 0; i < 3; i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(obj, sized[i]);
		if (!m || bpf_map__set_max_entries(m, (__u32)max_entries) != 0)
			return fail("%s has no map %s", path, sized[i]);
	}
	verifier_tail[0] = '\0';
	int err = bpf_object__load(obj);
	if (err)
		return fail("cannot load %s: %s%s%s%s", path, strerror(-err), permission_hint(err), verifier_tail[0] ? ": " : "",
			    verifier_tail);
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "anyturn_relay");
	if (!prog)
		return fail("%s has no program anyturn_relay", path);
	struct bpf_program *out = bpf_object__find_program_by_name(obj, "anyturn_steer_out");
	if (!out)
		return fail("%s has no program anyturn_steer_out", path);
	ncpus = libbpf_num_possible_cpus();
	if (ncpus <= 0)
		return fail("cannot count the possible CPUs");
	for (int i = 3; i < argc; i++)
		if (attach(bpf_program__fd(prog), argv[i], BPF_TC_INGRESS) != 0 || attach(bpf_program__fd(out), argv[i], BPF_TC_EGRESS) != 0)
			return 1;

	printf("ready %d", ncpus);
	for (int i = 0; i < n_ifaces; i++)
		printf(" %s:%s:%u:%u", ifaces[i].name, ifaces[i].hook.attach_point == BPF_TC_EGRESS ? "egress" : "ingress", ifaces[i].opts.handle,
		       ifaces[i].opts.priority);
	putchar('\n');
	fflush(stdout);
	serve(obj);
	detach_all();
	bpf_object__close(obj);
	return 0;
}
