// SPDX-License-Identifier: MIT
// anyturn's kernel data plane: relays TURN ChannelData over UDP at tc ingress
// (clsact, direct action). Design, map layouts and checksum findings:
// docs/dataplane.md. Protocol: RFC 8656 §12 (channels), §12.4 (ChannelData
// message), §12.5 (no padding over UDP), §12.6 (client to peer), §12.7 (peer
// to client).
//
// The rule everywhere: when in doubt, return TC_ACT_UNSPEC with the packet
// untouched, so the next tc filter and then the socket path (user space, the
// engine) see it exactly as it arrived. The program only ever relays what the
// engine installed, and only until the entry's expiry.
//
// Checksums. The UDP checksum is updated incrementally from the one that
// arrived (RFC 1624 arithmetic on 16-bit words), so a datagram that arrived
// with a bad checksum leaves with a bad one and the receiver drops it, as it
// would have without us. Every byte written in the L3/L4 headers goes through
// bpf_skb_store_bytes(BPF_F_RECOMPUTE_CSUM) and bpf_skb_adjust_room /
// bpf_skb_change_tail keep skb->csum in step, so CHECKSUM_COMPLETE stays right;
// CHECKSUM_NONE and CHECKSUM_UNNECESSARY only need the field itself right.
// CHECKSUM_PARTIAL (found here on veth: a datagram sent by a local socket
// through a veth with tx checksum offload on, the default, reaches the other
// end's tc ingress with only the pseudo-header sum in the field, and
// csum_start pointing at the old transport header, which adjust_room does not
// move) cannot be relayed: we recognise it by the field holding exactly the
// folded pseudo-header sum and pass it to user space (reason
// "checksum_partial"). A real NIC never delivers CHECKSUM_PARTIAL; a full
// checksum equal to the pseudo-header sum (chance 2^-16) merely takes the
// socket path. An IPv4 UDP checksum of 0 (none, RFC 768) passes to user space
// too ("no_checksum"): the relay would otherwise emit unchecksummed datagrams.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define ETH_LEN 14
#define IPV4_LEN 20
#define IPV6_LEN 40
#define UDP_LEN 8
#define CD_LEN 4
#define RELAY_TTL 64

// Map layouts. src/dataplane/kernel/entries.ts writes the same bytes: change
// both together. Addresses are 16 bytes (IPv4 as ::ffff:a.b.c.d), ports and
// the channel number in network order, stat ids and times in host order.
struct c2p_key {
	__u8 client[16];
	__u8 server[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 zero;
};

struct c2p_value {
	__u8 relay[16];
	__u8 peer[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 stat_id;
	__u64 expires_ns;
};

struct p2c_key {
	__u8 peer[16];
	__u8 relay[16];
	__be16 peer_port;
	__be16 relay_port;
};

struct p2c_value {
	__u8 client[16];
	__u8 server[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 zero;
	__u32 stat_id;
	__u32 zero2;
	__u64 expires_ns;
};

struct traffic {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

// Why a packet of an installed entry was relayed or passed to user space. The
// loader prints these by name in this order (loader.c REASONS).
enum reason {
	R_RELAYED_TO_PEER,
	R_RELAYED_TO_CLIENT,
	R_EXPIRED,
	R_NO_ROUTE,
	R_NO_NEIGHBOUR,
	R_TOO_BIG,
	R_MALFORMED,
	R_NO_CHECKSUM,
	R_CHECKSUM_PARTIAL,
	R_GSO,
	R_ERROR,
	// Port steering (docs/dataplane.md §8): one socket per relay address.
	R_STEERED_IN,
	R_STEERED_OUT,
	R_STEER_STRAY,
	R_STEER_GSO,
	R_STEER_TOO_BIG,
	R_STEER_MALFORMED,
	// Not reasons: the payload bytes behind R_RELAYED_TO_PEER and R_RELAYED_TO_CLIENT,
	// so that user space reads what the whole program relayed from this small map once a
	// second instead of every entry's counters (docs/dataplane.md §7).
	B_RELAYED_TO_PEER,
	B_RELAYED_TO_CLIENT,
	R_COUNT,
};

// max_entries of the first three maps are set by the loader before load.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct c2p_key);
	__type(value, struct c2p_value);
} c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct p2c_key);
	__type(value, struct p2c_value);
} p2c SEC(".maps");

// One slot per channel handle, preallocated: a plain array with atomic adds, not a per-CPU
// one, so that its size does not multiply by the CPUs (32 bytes a channel: 8 MiB for the
// default 262,144 channels, where per CPU it was 2 MiB per CPU for 65,536). A channel's
// packets mostly arrive on one CPU: the adds seldom contend.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct traffic);
} stats SEC(".maps");

// Port steering (docs/dataplane.md §8). A relay port of an allocation (kind
// STEER_RELAY) maps to the port of the one socket user space holds on that
// relay address; the shared socket's own port is listed too (kind
// STEER_SHARED), so that egress finds its datagrams and ingress drops what
// arrives for it from outside. Written by src/dataplane/kernel/entries.ts.
#define STEER_RELAY 1
#define STEER_SHARED 2
// The trailer's second half (the first is the relay port, network order).
#define TRAILER_MAGIC 0xa5c3
#define TRAILER_LEN 4

struct steer_key {
	__u8 addr[16];
	__be16 port;
	__u16 zero;
};

struct steer_value {
	__be16 shared_port;
	__u8 kind;
	__u8 zero;
};

// One entry per relayed port of every live allocation on this node (anycast
// relay mode: of the cluster), plus one per relay address: allocated on
// insert, so the size only bounds it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, struct steer_key);
	__type(value, struct steer_value);
} steer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} totals SEC(".maps");

// One parsed IPv4 or IPv6 UDP datagram (addresses as in the maps).
struct pkt {
	__u8 ip[IPV6_LEN] __attribute__((aligned(8))); // the IP header as it arrived
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__be16 udp_check;
	__u16 udp_len; // host order, UDP header included
	__u16 l3_len;  // 20 or 40
	__u8 family;
};

static __always_inline int count(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&totals, &reason);
	if (v)
		*v += 1;
	return TC_ACT_UNSPEC;
}

// After the packet was changed it cannot go to user space any more.
static __always_inline int drop_error(void)
{
	count(R_ERROR);
	return TC_ACT_SHOT;
}

// Ones' complement arithmetic over raw (memory-order) 16-bit words: the sum is
// byte-order independent (RFC 1071 §2(B)), so no word needs swapping.
static __always_inline __u32 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

static __always_inline __u32 sub16(__u32 s, __u16 x)
{
	return s + (__u16)~x;
}

static __always_inline __u32 addr_sum(const __u8 *a, __u8 family)
{
	const __u16 *w = (const __u16 *)a;
	__u32 s = 0;
	if (family == AF_INET)
		return (__u32)w[6] + w[7];
#pragma unroll
	for (int i = 0; i < 8; i++)
		s += w[i];
	return s;
}

static __always_inline __u32 addr_sub(__u32 s, const __u8 *a, __u8 family)
{
	const __u16 *w = (const __u16 *)a;
	if (family == AF_INET)
		return sub16(sub16(s, w[6]), w[7]);
#pragma unroll
	for (int i = 0; i < 8; i++)
		s = sub16(s, w[i]);
	return s;
}

// The pseudo-header sum (RFC 768; RFC 8200 §8.1), unfolded. The protocol word
// is the same in every packet here and cancels in every update.
static __always_inline __u32 pseudo_sum(const __u8 *src, const __u8 *dst, __u8 family, __u16 udp_len)
{
	return addr_sum(src, family) + addr_sum(dst, family) + bpf_htons(IPPROTO_UDP) + bpf_htons(udp_len);
}

static __always_inline int load_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 *ip = p->ip;
	if (bpf_skb_load_bytes(skb, ETH_LEN, ip, IPV4_LEN) < 0)
		return -1;
	// Version 4, no options (IHL 5), UDP, not a fragment (MF clear, offset 0).
	if (ip[0] != 0x45 || ip[9] != IPPROTO_UDP || (ip[6] & 0x3f) != 0 || ip[7] != 0)
		return -1;
	__u16 tot = ((__u16)ip[2] << 8) | ip[3];
	if (tot < IPV4_LEN + UDP_LEN || ETH_LEN + (__u32)tot > skb->len)
		return -1;
	__builtin_memset(p->src, 0, 10);
	__builtin_memset(p->dst, 0, 10);
	p->src[10] = p->src[11] = p->dst[10] = p->dst[11] = 0xff;
	__builtin_memcpy(&p->src[12], &ip[12], 4);
	__builtin_memcpy(&p->dst[12], &ip[16], 4);
	p->family = AF_INET;
	p->l3_len = IPV4_LEN;
	p->udp_len = tot - IPV4_LEN;
	return 0;
}

static __always_inline int load_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	__u8 *ip = p->ip;
	if (bpf_skb_load_bytes(skb, ETH_LEN, ip, IPV6_LEN) < 0)
		return -1;
	// Next header UDP directly: extension headers pass to user space.
	if ((ip[0] >> 4) != 6 || ip[6] != IPPROTO_UDP)
		return -1;
	__u16 plen = ((__u16)ip[4] << 8) | ip[5];
	if (plen < UDP_LEN || ETH_LEN + IPV6_LEN + (__u32)plen > skb->len)
		return -1;
	__builtin_memcpy(p->src, &ip[8], 16);
	__builtin_memcpy(p->dst, &ip[24], 16);
	p->family = AF_INET6;
	p->l3_len = IPV6_LEN;
	p->udp_len = plen;
	return 0;
}

// Looks up the route for a datagram the relay originates; fills the MACs and
// the egress ifindex. Returns a reason when it must pass, VIA_NEIGH when the
// kernel must route it (below), or -1 on success.
//
// bpf_fib_lookup answers only on a host that forwards on the ingress
// interface (it checks IN_DEV_FORWARD first, with or without
// BPF_FIB_LOOKUP_OUTPUT). A TURN server usually does not forward (ip_forward=0,
// and it should not have to become a router to relay): then the datagram is
// sent out of the interface it came in on with bpf_redirect_neigh, where the
// kernel looks up the route from that interface and resolves the next hop
// (queueing behind ARP/ND as a socket's send would). The MTU is checked first
// with bpf_check_mtu. A host whose clients and peers sit behind different
// interfaces enables forwarding on them (docs/dataplane.md).
#define VIA_NEIGH (-2)
static __always_inline int route(struct __sk_buff *skb, struct bpf_fib_lookup *fib, const __u8 *src, const __u8 *dst, __u8 family,
				 __be16 sport, __be16 dport, __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = family;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len;
	fib->ifindex = skb->ingress_ifindex;
	if (family == AF_INET) {
		__builtin_memcpy(&fib->ipv4_src, &src[12], 4);
		__builtin_memcpy(&fib->ipv4_dst, &dst[12], 4);
	} else {
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) {
		__u32 ifindex = skb->ingress_ifindex;
		__u32 mtu_len = tot_len;
		if (bpf_check_mtu(skb, ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return R_TOO_BIG;
		fib->ifindex = ifindex;
		return VIA_NEIGH;
	}
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return R_TOO_BIG;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return R_NO_NEIGHBOUR;
	return R_NO_ROUTE;
}

// Sends the rewritten datagram on: to the interface and next hop the FIB gave,
// or through the kernel's own route and neighbour lookup (route() above).
static __always_inline int send_on(struct bpf_fib_lookup *fib, int via_neigh)
{
	if (via_neigh)
		return bpf_redirect_neigh(fib->ifindex, 0, 0, 0);
	return bpf_redirect(fib->ifindex, 0);
}

// Writes the new IP header (addresses, lengths, TTL/hop limit 64: the relay
// originates a new datagram), the UDP header, and the MACs.
static __always_inline int write_headers(struct __sk_buff *skb, struct pkt *p, const __u8 *src, const __u8 *dst, __u8 *udp, __u32 udp_bytes,
					 __u16 new_udp_len, struct bpf_fib_lookup *fib, int via_neigh)
{
	__u8 *ip = p->ip;
	if (p->family == AF_INET) {
		__u16 tot = IPV4_LEN + new_udp_len;
		ip[2] = tot >> 8;
		ip[3] = tot & 0xff;
		ip[8] = RELAY_TTL;
		ip[10] = ip[11] = 0;
		__builtin_memcpy(&ip[12], &src[12], 4);
		__builtin_memcpy(&ip[16], &dst[12], 4);
		const __u16 *w = (const __u16 *)ip;
		__u32 s = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			s += w[i];
		__u16 check = ~fold(s);
		__builtin_memcpy(&ip[10], &check, 2);
		if (bpf_skb_store_bytes(skb, ETH_LEN, ip, IPV4_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
			return -1;
	} else {
		ip[4] = new_udp_len >> 8;
		ip[5] = new_udp_len & 0xff;
		ip[7] = RELAY_TTL;
		__builtin_memcpy(&ip[8], src, 16);
		__builtin_memcpy(&ip[24], dst, 16);
		if (bpf_skb_store_bytes(skb, ETH_LEN, ip, IPV6_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
			return -1;
	}
	__u32 l4 = ETH_LEN + (p->family == AF_INET ? IPV4_LEN : IPV6_LEN);
	if (udp_bytes == UDP_LEN) {
		if (bpf_skb_store_bytes(skb, l4, udp, UDP_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
			return -1;
	} else if (bpf_skb_store_bytes(skb, l4, udp, UDP_LEN + CD_LEN, BPF_F_RECOMPUTE_CSUM) < 0) {
		return -1;
	}
	// bpf_redirect_neigh writes the MACs itself.
	if (via_neigh)
		return 0;
	// The MACs lie outside skb->csum at ingress: no recompute.
	__u8 macs[12];
	__builtin_memcpy(macs, fib->dmac, 6);
	__builtin_memcpy(&macs[6], fib->smac, 6);
	return bpf_skb_store_bytes(skb, 0, macs, 12, 0) < 0 ? -1 : 0;
}

static __always_inline void add_traffic(__u32 stat_id, int to_peer, __u32 bytes)
{
	__u32 total = to_peer ? B_RELAYED_TO_PEER : B_RELAYED_TO_CLIENT;
	__u64 *sum = bpf_map_lookup_elem(&totals, &total);
	if (sum)
		*sum += bytes;
	struct traffic *t = bpf_map_lookup_elem(&stats, &stat_id);
	if (!t)
		return;
	if (to_peer) {
		__sync_fetch_and_add(&t->to_peer_packets, 1);
		__sync_fetch_and_add(&t->to_peer_bytes, bytes);
	} else {
		__sync_fetch_and_add(&t->to_client_packets, 1);
		__sync_fetch_and_add(&t->to_client_bytes, bytes);
	}
}

// The checks both directions share before anything is touched; a reason to
// pass, or -1.
static __always_inline int relayable(struct __sk_buff *skb, struct pkt *p, __u64 expires_ns)
{
	if (skb->gso_size != 0)
		return R_GSO;
	if (expires_ns <= bpf_ktime_get_ns())
		return R_EXPIRED;
	if (p->udp_check == 0)
		return p->family == AF_INET ? R_NO_CHECKSUM : R_MALFORMED;
	if (p->udp_check == (__u16)fold(pseudo_sum(p->src, p->dst, p->family, p->udp_len)))
		return R_CHECKSUM_PARTIAL;
	return -1;
}

// The contribution of the ChannelData padding bytes (RFC 8656 §12.5: up to 3,
// which the peer must not see) to the UDP sum, at their offsets in the datagram.
static __always_inline int padding_sum(struct __sk_buff *skb, __u32 l4, __u16 from, __u16 pad, __u32 *sum)
{
	__u8 bytes[3] = {};
	if (pad == 0)
		return 0;
	if (pad > 3 || bpf_skb_load_bytes(skb, l4 + from, bytes, pad) < 0)
		return -1;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (i < pad) {
			__u16 off = from + i;
			*sum += (off & 1) ? bpf_htons(bytes[i]) : bpf_htons((__u16)bytes[i] << 8);
		}
	}
	return 0;
}

// Client to peer (RFC 8656 §12.6): strip the ChannelData header and send the
// data from the relayed address to the peer.
static __always_inline int to_peer(struct __sk_buff *skb, struct pkt *p, const __u8 *cd, const struct c2p_value *e)
{
	int why = relayable(skb, p, e->expires_ns);
	if (why >= 0)
		return count(why);
	__u16 len = ((__u16)cd[2] << 8) | cd[3];
	__u16 room = p->udp_len - UDP_LEN - CD_LEN;
	// RFC 8656 §12.4: the length excludes the padding; more than 3 bytes
	// beyond it is not ChannelData.
	if (len > room || room - len > 3)
		return count(R_MALFORMED);
	__u16 new_udp_len = UDP_LEN + len;
	struct bpf_fib_lookup fib;
	why = route(skb, &fib, e->relay, e->peer, p->family, e->relay_port, e->peer_port, p->l3_len + new_udp_len);
	if (why >= 0)
		return count(why);
	int via_neigh = why == VIA_NEIGH;

	__u32 l4 = ETH_LEN + p->l3_len;
	// The old datagram's sum of everything but the checksum, minus what goes
	// away (pseudo header, UDP header, ChannelData header, padding), plus the
	// new pseudo and UDP headers (RFC 1624).
	__u32 s = (__u16)~p->udp_check;
	__u32 gone = 0;
	if (padding_sum(skb, l4, UDP_LEN + CD_LEN + len, room - len, &gone) < 0)
		return count(R_MALFORMED);
	s = sub16(s, fold(gone));
	s = addr_sub(s, p->src, p->family);
	s = addr_sub(s, p->dst, p->family);
	s = sub16(s, bpf_htons(p->udp_len));
	s = sub16(s, p->sport);
	s = sub16(s, p->dport);
	s = sub16(s, bpf_htons(p->udp_len)); // the UDP length field
	s = sub16(s, ((const __u16 *)cd)[0]);
	s = sub16(s, ((const __u16 *)cd)[1]);
	s += addr_sum(e->relay, p->family) + addr_sum(e->peer, p->family) + bpf_htons(new_udp_len);
	s += e->relay_port + e->peer_port + bpf_htons(new_udp_len);
	__u16 check = ~fold(s);
	if (check == 0)
		check = 0xffff;
	__u8 udp[UDP_LEN + CD_LEN];
	__builtin_memcpy(&udp[0], &e->relay_port, 2);
	__builtin_memcpy(&udp[2], &e->peer_port, 2);
	__u16 nl = bpf_htons(new_udp_len);
	__builtin_memcpy(&udp[4], &nl, 2);
	__builtin_memcpy(&udp[6], &check, 2);

	// Nothing was changed so far; from here on a failure drops the packet.
	// BPF_ADJ_ROOM_NET removes the 4 bytes right after the IP header: the old
	// source and destination ports. The 12 bytes after the IP header (old
	// length and checksum, ChannelData header) are then overwritten by the
	// new UDP header and the data follows it.
	if (bpf_skb_adjust_room(skb, -CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return count(R_ERROR);
	__u32 want = ETH_LEN + p->l3_len + new_udp_len;
	if (skb->len > want && bpf_skb_change_tail(skb, want, 0) < 0)
		return drop_error();
	if (write_headers(skb, p, e->relay, e->peer, udp, UDP_LEN, new_udp_len, &fib, via_neigh) < 0)
		return drop_error();
	count(R_RELAYED_TO_PEER);
	add_traffic(e->stat_id, 1, len);
	return send_on(&fib, via_neigh);
}

// Peer to client (RFC 8656 §12.7): prepend the ChannelData header (no padding
// over UDP, §12.5) and send from the listening address to the client.
static __always_inline int to_client(struct __sk_buff *skb, struct pkt *p, const struct p2c_value *e)
{
	int why = relayable(skb, p, e->expires_ns);
	if (why >= 0)
		return count(why);
	__u16 len = p->udp_len - UDP_LEN;
	if (p->udp_len > 0xffff - CD_LEN - p->l3_len)
		return count(R_TOO_BIG);
	__u16 new_udp_len = p->udp_len + CD_LEN;
	struct bpf_fib_lookup fib;
	why = route(skb, &fib, e->server, e->client, p->family, e->server_port, e->client_port, p->l3_len + new_udp_len);
	if (why >= 0)
		return count(why);
	int via_neigh = why == VIA_NEIGH;

	__u32 s = (__u16)~p->udp_check;
	s = addr_sub(s, p->src, p->family);
	s = addr_sub(s, p->dst, p->family);
	s = sub16(s, bpf_htons(p->udp_len));
	s = sub16(s, p->sport);
	s = sub16(s, p->dport);
	s = sub16(s, bpf_htons(p->udp_len));
	__be16 blen = bpf_htons(len);
	s += addr_sum(e->server, p->family) + addr_sum(e->client, p->family) + bpf_htons(new_udp_len);
	s += e->server_port + e->client_port + bpf_htons(new_udp_len);
	s += e->channel + blen;
	__u16 check = ~fold(s);
	if (check == 0)
		check = 0xffff;
	__u8 udp[UDP_LEN + CD_LEN];
	__builtin_memcpy(&udp[0], &e->server_port, 2);
	__builtin_memcpy(&udp[2], &e->client_port, 2);
	__u16 nl = bpf_htons(new_udp_len);
	__builtin_memcpy(&udp[4], &nl, 2);
	__builtin_memcpy(&udp[6], &check, 2);
	__builtin_memcpy(&udp[8], &e->channel, 2);
	__builtin_memcpy(&udp[10], &blen, 2);

	// BPF_ADJ_ROOM_NET inserts 4 zero bytes right after the IP header; the
	// old UDP header now sits 4 bytes later, and the 12 bytes after the IP
	// header become the new UDP header and the ChannelData header.
	__u32 old_len = skb->len;
	if (bpf_skb_adjust_room(skb, CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return count(R_ERROR);
	__u32 want = ETH_LEN + p->l3_len + new_udp_len;
	if (old_len + CD_LEN > want && bpf_skb_change_tail(skb, want, 0) < 0)
		return drop_error();
	if (write_headers(skb, p, e->server, e->client, udp, UDP_LEN + CD_LEN, new_udp_len, &fib, via_neigh) < 0)
		return drop_error();
	count(R_RELAYED_TO_CLIENT);
	add_traffic(e->stat_id, 0, len);
	return send_on(&fib, via_neigh);
}

// ---- Port steering (docs/dataplane.md §8) ----------------------------------
//
// With one UDP socket per relay address in user space (--relay-sockets
// shared), a peer's datagram to a relayed port is steered to that socket: its
// destination port becomes the shared socket's, and 4 bytes are appended at
// the end of the UDP payload: the original destination port and
// TRAILER_MAGIC, both in network order. User space reads them off, and writes
// the same 4 bytes after every datagram it sends from the shared socket; the
// egress program (anyturn_steer_out) takes them off again and sets the source
// port to the relayed port. Why a trailer and not a header: bpf_skb_adjust_room
// moves the headers but not csum_start, which breaks CHECKSUM_PARTIAL packets
// (§3); growing or trimming the tail leaves the UDP header where it is.
//
// Checksums go through bpf_l4_csum_replace, which knows the skb's checksum
// state: for CHECKSUM_PARTIAL (a local socket's datagram at egress) it updates
// only the pseudo-header fields (BPF_F_PSEUDO_HDR), for the others the field
// itself. Every change is a pair that leaves the bytes' sum unchanged (a port
// and the checksum field, a length and the IPv4 header checksum, the trailer
// and the checksum field), so the trailer and ports are stored without
// BPF_F_RECOMPUTE_CSUM and a CHECKSUM_COMPLETE skb->csum stays right; the
// IPv6 payload length is not covered by a header checksum and is stored with
// it. BPF_F_MARK_MANGLED_0 keeps an IPv4 checksum of 0 (none) at 0 and turns
// a computed 0 into 0xffff (RFC 768).

// The trailer's share of the UDP sum when it starts at offset `at` of the
// datagram: at an odd offset every byte sits in the other half of its 16-bit
// word, which swaps the bytes of the sum (RFC 1071 §2(B)).
static __always_inline __u32 trailer_sum(const __u8 *t, __u16 at)
{
	const __u16 *w = (const __u16 *)t;
	__u32 s = fold((__u32)w[0] + w[1]);
	if (at & 1)
		s = ((s << 8) | (s >> 8)) & 0xffff;
	return s;
}

// The UDP length (field and pseudo header), the IP length, and the trailer's
// share of the checksum, for a datagram going from old_len to new_len bytes.
// `sum_delta` is what the trailer adds to the sum (its negation when removed).
static __always_inline int steer_lengths(struct __sk_buff *skb, struct pkt *p, __u16 old_len, __u16 new_len, __u32 sum_delta)
{
	__u32 l4 = ETH_LEN + p->l3_len;
	__u32 check = l4 + 6;
	__be16 bo = bpf_htons(old_len), bn = bpf_htons(new_len);
	if (bpf_l4_csum_replace(skb, check, bo, bn, BPF_F_MARK_MANGLED_0 | 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, check, bo, bn, BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR | 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, check, 0, sum_delta, BPF_F_MARK_MANGLED_0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, l4 + 4, &bn, 2, 0) < 0)
		return -1;
	if (p->family == AF_INET) {
		__be16 to = bpf_htons(IPV4_LEN + old_len), tn = bpf_htons(IPV4_LEN + new_len);
		if (bpf_l3_csum_replace(skb, ETH_LEN + 10, to, tn, 2) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, ETH_LEN + 2, &tn, 2, 0) < 0 ? -1 : 0;
	}
	return bpf_skb_store_bytes(skb, ETH_LEN + 4, &bn, 2, BPF_F_RECOMPUTE_CSUM) < 0 ? -1 : 0;
}

static __always_inline int steer_drop(__u32 reason)
{
	count(reason);
	return TC_ACT_SHOT;
}

// Ingress: a peer's datagram to a relayed port goes to the shared socket with
// the relayed port in its trailer. GSO super-packets cannot be steered (one
// trailer for many datagrams): dropped and counted, as is a datagram the
// trailer would take past 65535 bytes.
static __always_inline int steer_in(struct __sk_buff *skb, struct pkt *p, const struct steer_value *sv)
{
	if (skb->gso_size != 0)
		return steer_drop(R_STEER_GSO);
	__u16 old_len = p->udp_len;
	if (old_len > 0xffff - TRAILER_LEN - (p->family == AF_INET ? IPV4_LEN : 0))
		return steer_drop(R_STEER_TOO_BIG);
	__u16 new_len = old_len + TRAILER_LEN;
	__u32 l4 = ETH_LEN + p->l3_len;
	__u8 t[TRAILER_LEN] __attribute__((aligned(4)));
	__builtin_memcpy(&t[0], &p->dport, 2);
	t[2] = TRAILER_MAGIC >> 8;
	t[3] = TRAILER_MAGIC & 0xff;
	// To the end of the IP datagram: an Ethernet trailer (padding) goes.
	if (bpf_skb_change_tail(skb, l4 + new_len, 0) < 0)
		return drop_error();
	if (bpf_skb_store_bytes(skb, l4 + old_len, t, TRAILER_LEN, 0) < 0)
		return drop_error();
	__be16 shared = sv->shared_port;
	if (bpf_l4_csum_replace(skb, l4 + 6, p->dport, shared, BPF_F_MARK_MANGLED_0 | 2) < 0)
		return drop_error();
	if (bpf_skb_store_bytes(skb, l4 + 2, &shared, 2, 0) < 0)
		return drop_error();
	if (steer_lengths(skb, p, old_len, new_len, trailer_sum(t, old_len)) < 0)
		return drop_error();
	count(R_STEERED_IN);
	return TC_ACT_OK;
}

// After the relay lookups missed (or passed): a relayed port of the shared
// socket is steered to it; a datagram to the shared socket's own port from
// outside is dropped, so every datagram that socket reads carries a trailer
// this program wrote.
static __always_inline int steer_lookup(struct __sk_buff *skb, struct pkt *p)
{
	struct steer_key k;
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.addr, p->dst, 16);
	k.port = p->dport;
	struct steer_value *v = bpf_map_lookup_elem(&steer, &k);
	if (!v)
		return TC_ACT_UNSPEC;
	if (v->kind == STEER_SHARED)
		return steer_drop(R_STEER_STRAY);
	if (v->kind != STEER_RELAY)
		return TC_ACT_UNSPEC;
	return steer_in(skb, p, v);
}

SEC("tc")
int anyturn_relay(struct __sk_buff *skb)
{
	struct pkt p;
	// VLAN-tagged frames (accelerated tag or 802.1Q header) pass.
	if (skb->vlan_present)
		return TC_ACT_UNSPEC;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (load_ipv4(skb, &p) < 0)
			return TC_ACT_UNSPEC;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (load_ipv6(skb, &p) < 0)
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	__u32 l4 = ETH_LEN + p.l3_len;
	__u8 hdr[UDP_LEN + CD_LEN] __attribute__((aligned(4)));
	if (bpf_skb_load_bytes(skb, l4, hdr, UDP_LEN) < 0)
		return TC_ACT_UNSPEC;
	// The UDP length must agree with the IP length.
	if ((((__u16)hdr[4] << 8) | hdr[5]) != p.udp_len)
		return TC_ACT_UNSPEC;
	__builtin_memcpy(&p.sport, &hdr[0], 2);
	__builtin_memcpy(&p.dport, &hdr[2], 2);
	__builtin_memcpy(&p.udp_check, &hdr[6], 2);

	// RFC 8656 §12.4: ChannelData starts with the bits 01, a channel number
	// in 0x4000-0x4FFF; the engine also binds RFC 5766's 0x5000-0x7FFF (old
	// clients use them), and only numbers it bound have an entry.
	if (p.udp_len >= UDP_LEN + CD_LEN && bpf_skb_load_bytes(skb, l4 + UDP_LEN, &hdr[UDP_LEN], CD_LEN) == 0 &&
	    (hdr[UDP_LEN] & 0xc0) == 0x40) {
		struct c2p_key k;
		__builtin_memset(&k, 0, sizeof(k));
		__builtin_memcpy(k.client, p.src, 16);
		__builtin_memcpy(k.server, p.dst, 16);
		k.client_port = p.sport;
		k.server_port = p.dport;
		__builtin_memcpy(&k.channel, &hdr[UDP_LEN], 2);
		struct c2p_value *e = bpf_map_lookup_elem(&c2p, &k);
		if (e)
			return to_peer(skb, &p, &hdr[UDP_LEN], e);
	}
	struct p2c_key pk;
	__builtin_memset(&pk, 0, sizeof(pk));
	__builtin_memcpy(pk.peer, p.src, 16);
	__builtin_memcpy(pk.relay, p.dst, 16);
	pk.peer_port = p.sport;
	pk.relay_port = p.dport;
	struct p2c_value *pe = bpf_map_lookup_elem(&p2c, &pk);
	if (pe) {
		// Passed untouched (expired, no route...): the socket path takes it,
		// which with a shared relay socket means the steering below.
		int r = to_client(skb, &p, pe);
		if (r != TC_ACT_UNSPEC)
			return r;
	}
	return steer_lookup(skb, &p);
}

// tc egress: a datagram the shared relay socket sent (source: a relay address
// and its shared port) carries the relayed port it must leave from in its last
// 4 bytes (written by user space, src/transport/udp/shared-relay.ts): check
// the magic, take the trailer off, set the source port. A first IPv4 fragment
// of such a datagram (larger than the MTU) cannot be fixed (the trailer is in
// the last fragment): dropped and counted, as are GSO packets and datagrams
// without a valid trailer.
SEC("tc")
int anyturn_steer_out(struct __sk_buff *skb)
{
	struct pkt p;
	int first_fragment = 0;
	if (skb->vlan_present)
		return TC_ACT_UNSPEC;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 *ip = p.ip;
		if (bpf_skb_load_bytes(skb, ETH_LEN, ip, IPV4_LEN) < 0)
			return TC_ACT_UNSPEC;
		// A later fragment has no UDP header to look at.
		if (ip[0] != 0x45 || ip[9] != IPPROTO_UDP || (ip[6] & 0x1f) != 0 || ip[7] != 0)
			return TC_ACT_UNSPEC;
		first_fragment = (ip[6] & 0x20) != 0;
		__u16 tot = ((__u16)ip[2] << 8) | ip[3];
		if (tot < IPV4_LEN + UDP_LEN || ETH_LEN + (__u32)tot > skb->len)
			return TC_ACT_UNSPEC;
		__builtin_memset(p.src, 0, 10);
		p.src[10] = p.src[11] = 0xff;
		__builtin_memcpy(&p.src[12], &ip[12], 4);
		p.family = AF_INET;
		p.l3_len = IPV4_LEN;
		p.udp_len = tot - IPV4_LEN;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (load_ipv6(skb, &p) < 0)
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	__u32 l4 = ETH_LEN + p.l3_len;
	__u8 hdr[UDP_LEN] __attribute__((aligned(4)));
	if (bpf_skb_load_bytes(skb, l4, hdr, UDP_LEN) < 0)
		return TC_ACT_UNSPEC;
	struct steer_key k;
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.addr, p.src, 16);
	__builtin_memcpy(&k.port, &hdr[0], 2);
	struct steer_value *v = bpf_map_lookup_elem(&steer, &k);
	if (!v || v->kind != STEER_SHARED)
		return TC_ACT_UNSPEC;
	if (first_fragment)
		return steer_drop(R_STEER_TOO_BIG);
	if (skb->gso_size != 0)
		return steer_drop(R_STEER_GSO);
	__u16 old_len = p.udp_len;
	if ((((__u16)hdr[4] << 8) | hdr[5]) != old_len || old_len < UDP_LEN + TRAILER_LEN)
		return steer_drop(R_STEER_MALFORMED);
	__u8 t[TRAILER_LEN] __attribute__((aligned(4)));
	if (bpf_skb_load_bytes(skb, l4 + old_len - TRAILER_LEN, t, TRAILER_LEN) < 0)
		return steer_drop(R_STEER_MALFORMED);
	__be16 relay_port;
	__builtin_memcpy(&relay_port, &t[0], 2);
	if (t[2] != (TRAILER_MAGIC >> 8) || t[3] != (TRAILER_MAGIC & 0xff) || relay_port == 0)
		return steer_drop(R_STEER_MALFORMED);
	__u16 new_len = old_len - TRAILER_LEN;
	if (bpf_skb_change_tail(skb, l4 + new_len, 0) < 0)
		return drop_error();
	__be16 old_port;
	__builtin_memcpy(&old_port, &hdr[0], 2);
	if (bpf_l4_csum_replace(skb, l4 + 6, old_port, relay_port, BPF_F_MARK_MANGLED_0 | 2) < 0)
		return drop_error();
	if (bpf_skb_store_bytes(skb, l4, &relay_port, 2, 0) < 0)
		return drop_error();
	// The removed trailer's share, negated (ones' complement).
	if (steer_lengths(skb, &p, old_len, new_len, ~trailer_sum(t, new_len) & 0xffff) < 0)
		return drop_error();
	count(R_STEERED_OUT);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
