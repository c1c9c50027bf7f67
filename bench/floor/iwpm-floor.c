/*
 * iwpm-floor.c - a bench-only "machine floor" for the IWPM benchmarks (bench/).
 *
 * NOT a port mapper. It speaks the IWPM netlink protocol towards the kernel the way
 * rdma-core's iwpmd does (socket(AF_NETLINK, SOCK_RAW, NETLINK_RDMA), nl_pid = getpid(),
 * groups 3, HELLO with ABI 4, MAPINFO request, replies to REG_PID / ADD_MAPPING /
 * QUERY_MAPPING, REMOVE_MAPPING handling) and the UDP peer protocol on 0.0.0.0:3935,
 * but only as far as the benchmark needs: no retransmission, no duplicate detection,
 * no MAPINFO replay, IPv4 peers only, one outstanding query per local address, few
 * checks. Its purpose is to show what a minimal single-threaded, well-batched C
 * implementation doing the same work per query reaches on a given machine:
 *
 *   per mapping   socket() + bind() (explicit port from ip_local_port_range, next one on
 *                 EADDRINUSE) and close() on REMOVE_MAPPING
 *   per query     REQ, ACC, ACK on UDP; RQUERY and REMOTE_INFO to the kernel
 *   I/O           one epoll loop, one thread; readiness -> recvmmsg batches of 64;
 *                 everything to send is queued and leaves with one sendmmsg per socket
 *                 per loop iteration (netlink first: REMOTE_INFO before its ACC)
 *
 * It runs under the bench's LD_PRELOAD shim (test/ref/nlredirect.c) like rdma-core's
 * iwpmd: the shim maps NETLINK_RDMA to NETLINK_USERSOCK, the kernel's port id 0 to the
 * bench kernel, UDP port 3935 to the test port, /etc/iwpmd.conf to the bench config.
 *
 * Build: gcc -O2 -std=c11 -Wall -o iwpm-floor iwpm-floor.c   (bench/lib/daemons.js does it)
 * Run:   iwpm-floor [-s]   (foreground always; -s accepted for iwpmd compatibility)
 * SIGTERM/SIGINT: prints its counters to stderr and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef NETLINK_RDMA
#define NETLINK_RDMA 20
#endif

/* ---- protocol constants (include/uapi/rdma/rdma_netlink.h, iwarp_pm.h) ---- */

enum {
	OP_REG_PID = 0,
	OP_ADD = 1,
	OP_QUERY = 2,
	OP_REMOVE = 3,
	OP_REMOTE_INFO = 4,
	OP_HANDLE_ERR = 5,
	OP_MAPINFO = 6,
	OP_MAPINFO_NUM = 7,
	OP_HELLO = 8,
};
#define RDMA_NL_IWCM 2
#define IWPM_ABI 4
#define IWPM_FLAGS_NO_PORT_MAP 1
#define ULIB_NAME "iWarpPortMapperUser"
#define ERR_INVALID_NLMSG 10
#define ERR_CREATE_MAPPING 11
#define ERR_DUPLICATE_MAPPING 12
#define ERR_REMOTE_QUERY_REJECT 16
#define IWARP_PM_PORT 3935
#define SS_SIZE 128 /* sockaddr_storage as IWPM carries it */
#define NLA_HDR 4
#define MAX_ATTR 8

#define PM_REQ 0
#define PM_ACC 1
#define PM_ACK 2
#define PM_REJ 3
#define PM_MSG_SIZE 48
#define PM_REQ_SIZE 64

/* ---- I/O sizes ---- */

#define RECV_BATCH 64       /* datagrams per recvmmsg */
#define MAX_RECV_ROUNDS 16  /* recvmmsg calls per socket per loop iteration (at most 1024 datagrams) */
#define NL_SLOT 8192        /* netlink receive slot */
#define UDP_SLOT 256        /* peer messages are 48 or 64 bytes */
#define SEND_CHUNK 1024     /* UIO_MAXIOV: most messages per sendmmsg */
#define NLQ_CAP 4096        /* queued netlink messages before a forced flush */
#define NLQ_SLOT 576        /* largest message we send: RQUERY / REMOTE_INFO, 560 bytes */
#define UDQ_CAP 4096        /* queued datagrams per UDP socket before a forced flush */
#define PEER_BUF_BYTES (4 << 20)
#define MAX_PROBES 16

/* ---- counters ---- */

static struct {
	unsigned long nl_in_dgrams, nl_in_msgs, nl_out_msgs, nl_out_calls, nl_send_errors, nl_foreign, nl_trunc;
	unsigned long udp_in, udp_out, udp_out_calls, udp_send_errors, udp_bad;
	unsigned long reg_pid, adds, queries, removes, remove_unknown, rquery_ok, rquery_rej, remote_info;
	unsigned long req_in, acc_in, ack_in, rej_in, rej_out, acc_unmatched, handle_err;
	unsigned long binds, probes_failed, fallbacks, reserve_failed, loops, recv_calls;
} st;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

/* ---- small helpers ---- */

static inline void w16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void w32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline uint16_t r16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t r32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rbe16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void wbe16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void die(const char *what)
{
	fprintf(stderr, "iwpm-floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* ---- address keys ---- */

/* family (2 or 10), port (host order), 16 IP bytes (IPv4 in the first 4) */
struct key {
	uint16_t family;
	uint16_t port;
	uint8_t ip[16];
};

static int key_from_ss(struct key *k, const uint8_t *ss)
{
	memset(k, 0, sizeof(*k));
	k->family = r16(ss);
	k->port = rbe16(ss + 2);
	if (k->family == AF_INET)
		memcpy(k->ip, ss + 4, 4);
	else if (k->family == AF_INET6)
		memcpy(k->ip, ss + 8, 16);
	else
		return -1;
	return 0;
}

static void key_from_peer(struct key *k, int ipv, const uint8_t *ip, uint16_t port)
{
	memset(k, 0, sizeof(*k));
	k->family = ipv == 4 ? AF_INET : AF_INET6;
	k->port = port;
	memcpy(k->ip, ip, ipv == 4 ? 4 : 16);
}

static int key_is_wildcard(const struct key *k)
{
	for (int i = 0; i < 16; i++)
		if (k->ip[i])
			return 0;
	return 1;
}

static inline uint64_t key_hash(const struct key *k)
{
	uint64_t a, b, c;
	memcpy(&a, k, 8);
	memcpy(&b, (const uint8_t *)k + 8, 8);
	c = r32((const uint8_t *)k + 16);
	uint64_t h = a * 0x9E3779B97F4A7C15ull ^ (b + 0xC2B2AE3D27D4EB4Full) * 0x165667B19E3779F9ull ^ c;
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	h ^= h >> 32;
	return h;
}

/* ---- mappings: a pool of entries and an open-addressing index (linear probing) ---- */

struct mapping {
	struct key key;          /* local address */
	uint8_t local[SS_SIZE];  /* as the kernel sent it (echoed verbatim) */
	uint8_t mapped[SS_SIZE]; /* local with the mapped port */
	int fd;                  /* reservation socket, -1 for NO_PORT_MAP */
	uint16_t mapped_port;
	uint8_t client;
	uint8_t wildcard;
	int refs;
	/* the one outstanding query of this local address */
	uint8_t q_pending;
	uint8_t q_client;
	uint32_t q_kseq;
	uint64_t q_handle; /* as on the wire (big-endian bytes) */
	uint8_t q_remote[SS_SIZE];
	int next_free;
};

static struct mapping *pool;
static int pool_cap, pool_used, free_head = -1;
static int32_t *index_tab; /* -1 empty, else pool index */
static uint32_t index_cap, index_count;

static int pool_alloc(void)
{
	int i;
	if (free_head >= 0) {
		i = free_head;
		free_head = pool[i].next_free;
		return i;
	}
	if (pool_used == pool_cap) {
		int n = pool_cap ? pool_cap * 2 : 4096;
		struct mapping *p = realloc(pool, (size_t)n * sizeof(*p));
		if (!p)
			die("realloc");
		pool = p;
		pool_cap = n;
	}
	return pool_used++;
}

static void pool_free(int i)
{
	pool[i].next_free = free_head;
	free_head = i;
}

static void index_init(uint32_t cap)
{
	index_tab = malloc(cap * sizeof(*index_tab));
	if (!index_tab)
		die("malloc");
	memset(index_tab, 0xff, cap * sizeof(*index_tab));
	index_cap = cap;
	index_count = 0;
}

static int index_find(const struct key *k)
{
	uint32_t mask = index_cap - 1, i = (uint32_t)key_hash(k) & mask;
	for (;;) {
		int32_t e = index_tab[i];
		if (e < 0)
			return -1;
		if (memcmp(&pool[e].key, k, sizeof(*k)) == 0)
			return e;
		i = (i + 1) & mask;
	}
}

static void index_put_raw(int e)
{
	uint32_t mask = index_cap - 1, i = (uint32_t)key_hash(&pool[e].key) & mask;
	while (index_tab[i] >= 0)
		i = (i + 1) & mask;
	index_tab[i] = e;
}

static void index_insert(int e)
{
	if ((index_count + 1) * 2 > index_cap) {
		int32_t *old = index_tab;
		uint32_t oldcap = index_cap;
		index_init(oldcap * 2);
		for (uint32_t i = 0; i < oldcap; i++)
			if (old[i] >= 0)
				index_put_raw(old[i]);
		free(old);
		index_count = 0;
		for (uint32_t i = 0; i < index_cap; i++)
			index_count += index_tab[i] >= 0;
	}
	index_put_raw(e);
	index_count++;
}

/* backward-shift deletion */
static void index_remove(int e)
{
	uint32_t mask = index_cap - 1, i = (uint32_t)key_hash(&pool[e].key) & mask;
	while (index_tab[i] != e) {
		if (index_tab[i] < 0)
			return;
		i = (i + 1) & mask;
	}
	uint32_t j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (index_tab[j] < 0)
			break;
		uint32_t home = (uint32_t)key_hash(&pool[index_tab[j]].key) & mask;
		/* move j into the hole at i unless its home lies cyclically in (i, j] */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			index_tab[i] = index_tab[j];
			i = j;
		}
	}
	index_tab[i] = -1;
	index_count--;
}

/* exact match, then a wildcard mapping on the same port (rdma-core's fuzzy lookup, the cheap half) */
static int lookup_fuzzy(const struct key *k)
{
	int e = index_find(k);
	if (e >= 0 || key_is_wildcard(k))
		return e;
	struct key w = { .family = k->family, .port = k->port };
	return index_find(&w);
}

/* ---- port reservation ---- */

static uint16_t port_low = 32768, port_high = 60999, port_cursor;
static uint8_t port_busy[65536]; /* held by us or in ip_local_reserved_ports */

static void read_port_config(void)
{
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
	unsigned lo, hi;
	if (f) {
		if (fscanf(f, "%u %u", &lo, &hi) == 2 && lo >= 1 && hi >= lo && hi <= 65535) {
			port_low = (uint16_t)lo;
			port_high = (uint16_t)hi;
		}
		fclose(f);
	}
	port_cursor = port_low;
	f = fopen("/proc/sys/net/ipv4/ip_local_reserved_ports", "r");
	if (f) {
		char buf[8192];
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		fclose(f);
		char *save, *tok = strtok_r(buf, ",\n", &save);
		for (; tok; tok = strtok_r(NULL, ",\n", &save)) {
			unsigned a, b;
			int k = sscanf(tok, "%u-%u", &a, &b);
			if (k == 1)
				b = a;
			if (k >= 1)
				for (unsigned p = a; p <= b && p <= 65535; p++)
					port_busy[p] |= 2;
		}
	}
}

static uint16_t next_candidate(void)
{
	uint32_t size = (uint32_t)port_high - port_low + 1;
	for (uint32_t i = 0; i < size; i++) {
		uint16_t p = port_cursor;
		port_cursor = p >= port_high ? port_low : (uint16_t)(p + 1);
		if (!port_busy[p])
			return p;
	}
	return 0;
}

/* socket() + bind() on the wildcard address; returns the fd or -errno, *port = the bound port */
static int reserve_port(int family, uint16_t *port)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_storage ss;
	socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	for (int round = 0;; round++) {
		uint16_t p = round < MAX_PROBES ? next_candidate() : 0;
		memset(&ss, 0, sizeof(ss));
		ss.ss_family = (sa_family_t)family;
		if (family == AF_INET)
			((struct sockaddr_in *)&ss)->sin_port = htons(p);
		else
			((struct sockaddr_in6 *)&ss)->sin6_port = htons(p);
		st.binds++;
		if (bind(fd, (struct sockaddr *)&ss, len) == 0) {
			if (p == 0) {
				st.fallbacks++;
				if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
					int e = errno;
					close(fd);
					return -e;
				}
				p = ntohs(((struct sockaddr_in *)&ss)->sin_port);
			}
			*port = p;
			port_busy[p] |= 1;
			return fd;
		}
		int e = errno;
		if (p != 0 && (e == EADDRINUSE || e == EACCES)) {
			st.probes_failed++;
			continue; /* a failed bind leaves the socket unbound: try the next port */
		}
		close(fd);
		return -e;
	}
}

static void release_port(struct mapping *m)
{
	if (m->fd >= 0) {
		close(m->fd);
		port_busy[m->mapped_port] &= (uint8_t)~1;
		m->fd = -1;
	}
}

/* ---- sockets and output queues ---- */

static int nl_fd, srv_fd, cli_fd;
static uint32_t my_port_id;
static uint32_t nl_seq;
static uint16_t abi_version = IWPM_ABI;
static uint8_t registered[64];

static uint8_t *nlq_buf;
static uint32_t nlq_len[NLQ_CAP];
static unsigned nlq_n;

struct udq {
	int fd;
	unsigned n;
	uint8_t (*buf)[PM_REQ_SIZE];
	uint8_t *len;
	struct sockaddr_in *dst;
};
static struct udq q_srv, q_cli;

static struct mmsghdr send_vec[SEND_CHUNK];
static struct iovec send_iov[SEND_CHUNK];

static void flush_nl(void)
{
	static struct sockaddr_nl kernel = { .nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 0 };
	unsigned done = 0;
	while (done < nlq_n) {
		unsigned n = nlq_n - done;
		if (n > SEND_CHUNK)
			n = SEND_CHUNK;
		for (unsigned i = 0; i < n; i++) {
			send_iov[i].iov_base = nlq_buf + (size_t)(done + i) * NLQ_SLOT;
			send_iov[i].iov_len = nlq_len[done + i];
			memset(&send_vec[i].msg_hdr, 0, sizeof(send_vec[i].msg_hdr));
			send_vec[i].msg_hdr.msg_name = &kernel;
			send_vec[i].msg_hdr.msg_namelen = sizeof(kernel);
			send_vec[i].msg_hdr.msg_iov = &send_iov[i];
			send_vec[i].msg_hdr.msg_iovlen = 1;
		}
		st.nl_out_calls++;
		int r = sendmmsg(nl_fd, send_vec, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (++st.nl_send_errors <= 5)
				fprintf(stderr, "iwpm-floor: netlink sendmmsg: %s\n", strerror(errno));
			done++; /* drop the message that failed */
			continue;
		}
		st.nl_out_msgs += (unsigned)r;
		done += (unsigned)r;
	}
	nlq_n = 0;
}

static void flush_udp(struct udq *q)
{
	unsigned done = 0;
	while (done < q->n) {
		unsigned n = q->n - done;
		if (n > SEND_CHUNK)
			n = SEND_CHUNK;
		for (unsigned i = 0; i < n; i++) {
			send_iov[i].iov_base = q->buf[done + i];
			send_iov[i].iov_len = q->len[done + i];
			memset(&send_vec[i].msg_hdr, 0, sizeof(send_vec[i].msg_hdr));
			send_vec[i].msg_hdr.msg_name = &q->dst[done + i];
			send_vec[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
			send_vec[i].msg_hdr.msg_iov = &send_iov[i];
			send_vec[i].msg_hdr.msg_iovlen = 1;
		}
		st.udp_out_calls++;
		int r = sendmmsg(q->fd, send_vec, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (++st.udp_send_errors <= 5)
				fprintf(stderr, "iwpm-floor: udp sendmmsg: %s\n", strerror(errno));
			done++;
			continue;
		}
		st.udp_out += (unsigned)r;
		done += (unsigned)r;
	}
	q->n = 0;
}

static uint8_t *nl_slot(void)
{
	if (nlq_n == NLQ_CAP)
		flush_nl();
	uint8_t *p = nlq_buf + (size_t)nlq_n * NLQ_SLOT;
	return p;
}

static void nl_commit(uint8_t *p, uint32_t len)
{
	w32(p, len);
	nlq_len[nlq_n++] = len;
}

static uint8_t *udp_slot(struct udq *q, const struct sockaddr_in *dst, uint8_t len)
{
	if (q->n == UDQ_CAP)
		flush_udp(q);
	q->dst[q->n] = *dst;
	q->len[q->n] = len;
	return q->buf[q->n++];
}

/* netlink message builders: each returns the offset after what it wrote */
static uint32_t put_hdr(uint8_t *p, int client, int op)
{
	w16(p + 4, (uint16_t)((client & 0x3f) << 10 | op));
	w16(p + 6, NLM_F_REQUEST);
	w32(p + 8, nl_seq++);
	w32(p + 12, my_port_id);
	return 16;
}

static uint32_t put_u32(uint8_t *p, uint32_t off, int type, uint32_t v)
{
	w16(p + off, NLA_HDR + 4);
	w16(p + off + 2, (uint16_t)type);
	w32(p + off + 4, v);
	return off + 8;
}

static uint32_t put_u16(uint8_t *p, uint32_t off, int type, uint16_t v)
{
	w16(p + off, NLA_HDR + 2);
	w16(p + off + 2, (uint16_t)type);
	w16(p + off + 4, v);
	w16(p + off + 6, 0);
	return off + 8;
}

static uint32_t put_str(uint8_t *p, uint32_t off, int type, const char *s, size_t n)
{
	uint32_t alen = NLA_HDR + (uint32_t)n + 1, end = off + ((alen + 3) & ~3u);
	w16(p + off, (uint16_t)alen);
	w16(p + off + 2, (uint16_t)type);
	memcpy(p + off + NLA_HDR, s, n);
	memset(p + off + NLA_HDR + n, 0, end - (off + NLA_HDR + n));
	return end;
}

/* address attribute; returns a pointer to its 128 bytes (caller fills them) */
static uint8_t *put_addr(uint8_t *p, uint32_t *off, int type)
{
	w16(p + *off, NLA_HDR + SS_SIZE);
	w16(p + *off + 2, (uint16_t)type);
	uint8_t *a = p + *off + NLA_HDR;
	*off += NLA_HDR + SS_SIZE;
	return a;
}

static void send_hello(void)
{
	uint8_t *p = nl_slot();
	uint32_t off = put_hdr(p, RDMA_NL_IWCM, OP_HELLO);
	off = put_u16(p, off, 1, IWPM_ABI);
	nl_commit(p, off);
}

static void send_mapinfo_request(int client)
{
	uint8_t *p = nl_slot();
	uint32_t off = put_hdr(p, client, OP_MAPINFO);
	off = put_str(p, off, 1, ULIB_NAME, strlen(ULIB_NAME));
	off = put_u16(p, off, 2, abi_version);
	nl_commit(p, off);
}

static void send_handle_err(int client, uint32_t kseq, uint16_t code)
{
	uint8_t *p = nl_slot();
	uint32_t off = put_hdr(p, client, OP_HANDLE_ERR);
	off = put_u32(p, off, 1, kseq);
	off = put_u16(p, off, 2, code);
	nl_commit(p, off);
	st.handle_err++;
}

/* a 128-byte address from peer-message fields; zero beyond the used bytes */
static void fill_ss(uint8_t *a, uint16_t family, uint16_t port, const uint8_t *ip)
{
	memset(a, 0, SS_SIZE);
	w16(a, family);
	wbe16(a + 2, port);
	if (family == AF_INET)
		memcpy(a + 4, ip, 4);
	else
		memcpy(a + 8, ip, 16);
}

/* ---- kernel messages ---- */

struct attrs {
	const uint8_t *p[MAX_ATTR + 1];
	uint16_t len[MAX_ATTR + 1];
};

static int parse_attrs(const uint8_t *payload, uint32_t n, struct attrs *a)
{
	memset(a, 0, sizeof(*a));
	uint32_t off = 0;
	while (off + NLA_HDR <= n) {
		uint16_t len = r16(payload + off), type = r16(payload + off + 2) & 0x3fff;
		if (len < NLA_HDR || off + len > n)
			return -1;
		if (type <= MAX_ATTR) {
			a->p[type] = payload + off + NLA_HDR;
			a->len[type] = (uint16_t)(len - NLA_HDR);
		}
		off += (len + 3u) & ~3u;
	}
	return 0;
}

static int has_u32(const struct attrs *a, int t) { return a->p[t] && a->len[t] >= 4; }
static int has_addr(const struct attrs *a, int t)
{
	if (!a->p[t] || a->len[t] < SS_SIZE)
		return 0;
	uint16_t f = r16(a->p[t]);
	return f == AF_INET || f == AF_INET6;
}

static void on_reg_pid(int client, uint32_t kseq, const struct attrs *a)
{
	if (!has_u32(a, 1) || !a->p[2] || !a->p[3] || !a->p[4]) {
		send_handle_err(client, kseq, ERR_INVALID_NLMSG);
		return;
	}
	st.reg_pid++;
	registered[client] = 1;
	size_t n = strnlen((const char *)a->p[3], a->len[3]);
	if (n > 31)
		n = 31;
	uint8_t *p = nl_slot();
	uint32_t off = put_hdr(p, client, OP_REG_PID);
	off = put_u32(p, off, 1, kseq);
	off = put_str(p, off, 2, (const char *)a->p[3], n);
	off = put_str(p, off, 3, ULIB_NAME, strlen(ULIB_NAME));
	off = put_u16(p, off, 4, abi_version);
	off = put_u16(p, off, 5, 0);
	nl_commit(p, off);
}

/* a new mapping for `local` (reserving a port unless no_port_map); returns the pool index or -errno */
static int create_mapping(const uint8_t *local, const struct key *k, int client, int no_port_map)
{
	int fd = -1;
	uint16_t port = k->port;
	if (!no_port_map) {
		fd = reserve_port(k->family, &port);
		if (fd < 0) {
			if (++st.reserve_failed <= 5)
				fprintf(stderr, "iwpm-floor: port reservation failed: %s\n", strerror(-fd));
			return fd;
		}
	}
	int e = pool_alloc();
	struct mapping *m = &pool[e];
	m->key = *k;
	memcpy(m->local, local, SS_SIZE);
	memcpy(m->mapped, local, SS_SIZE);
	wbe16(m->mapped + 2, port);
	m->fd = fd;
	m->mapped_port = port;
	m->client = (uint8_t)client;
	m->wildcard = (uint8_t)key_is_wildcard(k);
	m->refs = 1;
	m->q_pending = 0;
	index_insert(e);
	return e;
}

static void drop_mapping(int e)
{
	index_remove(e);
	release_port(&pool[e]);
	pool_free(e);
}

/* Mapping e (found by lookup_fuzzy, -1 = none) gains a user, or a new one is made; -1
 * once HANDLE_ERR has answered a failed creation. */
static int use_or_create(int e, int client, uint32_t kseq, const uint8_t *ss, const struct key *k, uint32_t flags)
{
	if (e >= 0) {
		pool[e].refs++;
		return e;
	}
	e = create_mapping(ss, k, client, flags & IWPM_FLAGS_NO_PORT_MAP);
	if (e < 0)
		send_handle_err(client, kseq, ERR_CREATE_MAPPING);
	return e;
}

static void on_add(int client, uint32_t kseq, const struct attrs *a)
{
	struct key k;
	if (!has_u32(a, 1) || !has_addr(a, 2) || key_from_ss(&k, a->p[2]) < 0) {
		send_handle_err(client, kseq, ERR_INVALID_NLMSG);
		return;
	}
	if (!registered[client])
		return; /* as rdma-core: dropped, the kernel times out */
	st.adds++;
	uint32_t flags = has_u32(a, 3) ? r32(a->p[3]) : 0;
	int e = lookup_fuzzy(&k);
	if (e >= 0 && !(pool[e].wildcard && memcmp(&pool[e].key, &k, sizeof(k)) == 0)) {
		send_handle_err(client, kseq, ERR_DUPLICATE_MAPPING);
		return;
	}
	if ((e = use_or_create(e, client, kseq, a->p[2], &k, flags)) < 0)
		return;
	struct mapping *m = &pool[e];
	uint8_t *p = nl_slot();
	uint32_t off = put_hdr(p, client, OP_ADD);
	off = put_u32(p, off, 1, kseq);
	memcpy(put_addr(p, &off, 2), m->local, SS_SIZE);
	memcpy(put_addr(p, &off, 3), m->mapped, SS_SIZE);
	off = put_u16(p, off, 4, 0);
	nl_commit(p, off);
}

static uint64_t handle_state;
static uint64_t next_handle(void)
{
	/* splitmix64 over a randomly seeded counter: unique and hard to guess */
	uint64_t z = (handle_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void on_query(int client, uint32_t kseq, const struct attrs *a)
{
	struct key k;
	if (!has_u32(a, 1) || !has_addr(a, 2) || !has_addr(a, 3) || key_from_ss(&k, a->p[2]) < 0 ||
	    r16(a->p[2]) != r16(a->p[3])) {
		send_handle_err(client, kseq, ERR_INVALID_NLMSG);
		return;
	}
	if (!registered[client])
		return;
	st.queries++;
	if (k.family != AF_INET) { /* this floor has IPv4 peer sockets only */
		send_handle_err(client, kseq, ERR_CREATE_MAPPING);
		return;
	}
	uint32_t flags = has_u32(a, 4) ? r32(a->p[4]) : 0;
	int e = lookup_fuzzy(&k);
	if (e >= 0 && (pool[e].wildcard || pool[e].q_pending)) { /* the floor keeps one query per local address */
		send_handle_err(client, kseq, ERR_CREATE_MAPPING);
		return;
	}
	if ((e = use_or_create(e, client, kseq, a->p[2], &k, flags)) < 0)
		return;
	struct mapping *m = &pool[e];
	const uint8_t *remote = a->p[3];
	m->q_pending = 1;
	m->q_client = (uint8_t)client;
	m->q_kseq = kseq;
	memcpy(m->q_remote, remote, SS_SIZE);

	/* REQ to the remote IP's port 3935, from the client socket */
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(IWARP_PM_PORT) };
	memcpy(&dst.sin_addr, remote + 4, 4);
	uint8_t *r = udp_slot(&q_cli, &dst, PM_REQ_SIZE);
	memset(r, 0, PM_REQ_SIZE);
	r[0] = (uint8_t)(PM_REQ << 4 | 4);
	wbe16(r + 2, m->mapped_port);    /* reserved = mapped cp port */
	memcpy(r + 4, remote + 2, 2);    /* apport */
	memcpy(r + 6, m->local + 2, 2);  /* cpport */
	uint64_t h = next_handle();
	memcpy(r + 8, &h, 8);
	m->q_handle = h;
	memcpy(r + 16, m->local + 4, 4);  /* cpipaddr */
	memcpy(r + 32, remote + 4, 4);    /* apipaddr */
	memcpy(r + 48, m->mapped + 4, 4); /* mapped_cpipaddr */
}

static void on_remove(int client, uint32_t kseq, const struct attrs *a)
{
	struct key k;
	if (!has_u32(a, 1) || !has_addr(a, 2) || key_from_ss(&k, a->p[2]) < 0) {
		send_handle_err(client, kseq, ERR_INVALID_NLMSG);
		return;
	}
	st.removes++;
	int e = index_find(&k);
	if (e < 0 || pool[e].client != client) {
		st.remove_unknown++;
		return;
	}
	if (--pool[e].refs <= 0)
		drop_mapping(e);
}

static void on_kernel_hello(int client, const struct attrs *a)
{
	uint16_t v = a->p[1] && a->len[1] >= 2 ? r16(a->p[1]) : IWPM_ABI;
	abi_version = v < IWPM_ABI ? v : IWPM_ABI;
	send_mapinfo_request(client);
}

static void on_nl_message(const struct nlmsghdr *h)
{
	st.nl_in_msgs++;
	uint16_t type = h->nlmsg_type;
	if (type == NLMSG_ERROR) {
		/* an ABI 3 kernel refuses HELLO: fall back to ABI 3 (client 2 only) */
		const uint8_t *pl = (const uint8_t *)NLMSG_DATA(h);
		if (h->nlmsg_len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN && r16(pl + 4 + 4) == (RDMA_NL_IWCM << 10 | OP_HELLO)) {
			fprintf(stderr, "iwpm-floor: kernel refused HELLO: ABI 3\n");
			abi_version = 3;
			send_mapinfo_request(RDMA_NL_IWCM);
		}
		return;
	}
	if (type < 0x10) /* NLMSG_DONE (status of what we sent), NOOP, ... */
		return;
	int client = type >> 10, op = type & 0x3ff;
	struct attrs a;
	if (parse_attrs((const uint8_t *)NLMSG_DATA(h), h->nlmsg_len - NLMSG_HDRLEN, &a) < 0) {
		send_handle_err(client, h->nlmsg_seq, ERR_INVALID_NLMSG);
		return;
	}
	switch (op) {
	case OP_REG_PID:
		on_reg_pid(client, h->nlmsg_seq, &a);
		break;
	case OP_ADD:
		on_add(client, h->nlmsg_seq, &a);
		break;
	case OP_QUERY:
		on_query(client, h->nlmsg_seq, &a);
		break;
	case OP_REMOVE:
		on_remove(client, h->nlmsg_seq, &a);
		break;
	case OP_HELLO:
		on_kernel_hello(client, &a);
		break;
	default: /* MAPINFO records / MAPINFO_NUM: the bench kernel sends none */
		break;
	}
}

/* ---- peer messages ---- */

static void on_peer(struct udq *via, const uint8_t *b, unsigned len, const struct sockaddr_in *from)
{
	if (len != PM_MSG_SIZE && len != PM_REQ_SIZE) {
		st.udp_bad++;
		return;
	}
	int ipv = b[0] & 0x0f, type = (b[0] >> 4) & 3;
	if ((b[0] >> 6) != 0 || ipv != 4 || (type == PM_REQ && len != PM_REQ_SIZE)) {
		st.udp_bad++;
		return;
	}
	struct key k;
	switch (type) {
	case PM_REQ: {
		st.req_in++;
		key_from_peer(&k, 4, b + 32, rbe16(b + 4));
		int e = lookup_fuzzy(&k);
		uint8_t *o = udp_slot(via, from, PM_MSG_SIZE);
		memcpy(o, b, PM_MSG_SIZE);
		o[2] = o[3] = 0;
		memset(o + 20, 0, 12);
		memset(o + 36, 0, 12);
		if (e < 0) {
			o[0] = (uint8_t)(PM_REJ << 4 | 4);
			st.rej_out++;
			return;
		}
		struct mapping *m = &pool[e];
		o[0] = (uint8_t)(PM_ACC << 4 | 4);
		wbe16(o + 4, m->mapped_port);
		if (!m->wildcard)
			memcpy(o + 32, m->mapped + 4, 4);
		/* REMOTE_INFO to the kernel (queued before the ACC's send: netlink is flushed first) */
		uint8_t *p = nl_slot();
		uint32_t off = put_hdr(p, m->client, OP_REMOTE_INFO);
		off = put_u32(p, off, 1, 0);
		memcpy(put_addr(p, &off, 2), m->local, SS_SIZE);
		fill_ss(put_addr(p, &off, 3), AF_INET, rbe16(b + 6), b + 16);
		memcpy(put_addr(p, &off, 4), m->mapped, SS_SIZE);
		fill_ss(put_addr(p, &off, 5), AF_INET, rbe16(b + 2), b + 48);
		off = put_u16(p, off, 6, 0);
		nl_commit(p, off);
		st.remote_info++;
		return;
	}
	case PM_ACC:
	case PM_REJ: {
		if (type == PM_ACC)
			st.acc_in++;
		else
			st.rej_in++;
		key_from_peer(&k, 4, b + 16, rbe16(b + 6));
		int e = index_find(&k);
		if (e < 0 || !pool[e].q_pending || memcmp(&pool[e].q_handle, b + 8, 8) != 0) {
			st.acc_unmatched++;
			return;
		}
		struct mapping *m = &pool[e];
		m->q_pending = 0;
		uint8_t *p = nl_slot();
		uint32_t off = put_hdr(p, m->q_client, OP_QUERY);
		off = put_u32(p, off, 1, m->q_kseq);
		memcpy(put_addr(p, &off, 2), m->local, SS_SIZE);
		memcpy(put_addr(p, &off, 3), m->q_remote, SS_SIZE);
		memcpy(put_addr(p, &off, 4), m->mapped, SS_SIZE);
		uint8_t *mr = put_addr(p, &off, 5);
		if (type == PM_ACC)
			fill_ss(mr, r16(m->q_remote), rbe16(b + 4), b + 32);
		else
			memcpy(mr, m->q_remote, SS_SIZE);
		off = put_u16(p, off, 6, type == PM_ACC ? 0 : ERR_REMOTE_QUERY_REJECT);
		nl_commit(p, off);
		if (type == PM_ACC) {
			st.rquery_ok++;
			uint8_t *o = udp_slot(via, from, PM_MSG_SIZE);
			memcpy(o, b, PM_MSG_SIZE);
			o[0] = (uint8_t)(PM_ACK << 4 | 4);
		} else {
			st.rquery_rej++;
		}
		return;
	}
	case PM_ACK:
		st.ack_in++; /* no retransmission state to clear */
		return;
	}
}

/* ---- receive loops ---- */

static uint8_t *nl_rbuf, *udp_rbuf;
static struct mmsghdr recv_vec[RECV_BATCH];
static struct iovec recv_iov[RECV_BATCH];
static struct sockaddr_storage recv_from[RECV_BATCH];

/* recv_vec: RECV_BATCH slots of `slot` bytes in buf, each with room for the sender's address. */
static void prepare_recv(uint8_t *buf, size_t slot)
{
	for (int i = 0; i < RECV_BATCH; i++) {
		recv_iov[i].iov_base = buf + (size_t)i * slot;
		recv_iov[i].iov_len = slot;
		memset(&recv_vec[i].msg_hdr, 0, sizeof(recv_vec[i].msg_hdr));
		recv_vec[i].msg_hdr.msg_name = &recv_from[i];
		recv_vec[i].msg_hdr.msg_namelen = sizeof(recv_from[i]);
		recv_vec[i].msg_hdr.msg_iov = &recv_iov[i];
		recv_vec[i].msg_hdr.msg_iovlen = 1;
	}
}

static void drain_netlink(void)
{
	for (int round = 0; round < MAX_RECV_ROUNDS; round++) {
		prepare_recv(nl_rbuf, NL_SLOT);
		st.recv_calls++;
		int n = recvmmsg(nl_fd, recv_vec, RECV_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				fprintf(stderr, "iwpm-floor: netlink receive overrun (ENOBUFS)\n");
				continue;
			}
			return; /* EAGAIN */
		}
		for (int i = 0; i < n; i++) {
			const struct sockaddr_nl *src = (const struct sockaddr_nl *)&recv_from[i];
			st.nl_in_dgrams++;
			if (src->nl_family != AF_NETLINK || src->nl_pid != 0) {
				st.nl_foreign++;
				continue;
			}
			if (recv_vec[i].msg_hdr.msg_flags & MSG_TRUNC) {
				st.nl_trunc++;
				continue;
			}
			int len = (int)recv_vec[i].msg_len;
			const struct nlmsghdr *h = (const struct nlmsghdr *)recv_iov[i].iov_base;
			for (; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len))
				on_nl_message(h);
		}
		if (n < RECV_BATCH)
			return;
	}
}

static void drain_udp(struct udq *q)
{
	for (int round = 0; round < MAX_RECV_ROUNDS; round++) {
		prepare_recv(udp_rbuf, UDP_SLOT);
		st.recv_calls++;
		int n = recvmmsg(q->fd, recv_vec, RECV_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
				continue; /* a queued ICMP error, reported once */
			return;
		}
		for (int i = 0; i < n; i++) {
			st.udp_in++;
			if (recv_from[i].ss_family != AF_INET) {
				st.udp_bad++;
				continue;
			}
			on_peer(q, recv_iov[i].iov_base, recv_vec[i].msg_len, (const struct sockaddr_in *)&recv_from[i]);
		}
		if (n < RECV_BATCH)
			return;
	}
}

/* ---- setup ---- */

static long config_rbuf(void)
{
	long v = 0;
	FILE *f = fopen("/etc/iwpmd.conf", "r"); /* the shim redirects it to the bench config */
	if (!f)
		return 0;
	char line[256];
	while (fgets(line, sizeof(line), f)) {
		long x;
		if (sscanf(line, " nl_sock_rbuf_size = %ld", &x) == 1 && x > 0)
			v = x;
	}
	fclose(f);
	return v;
}

static void set_buf(int fd, int force_opt, int opt, int bytes)
{
	if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof(bytes)) < 0 &&
	    setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes)) < 0)
		fprintf(stderr, "iwpm-floor: setsockopt(buffer %d): %s\n", bytes, strerror(errno));
}

static int udp_socket(uint16_t port)
{
	/* blocking: sends wait for room; receives use MSG_DONTWAIT */
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket(udp)");
	set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, PEER_BUF_BYTES);
	set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, PEER_BUF_BYTES);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind(udp)");
	return fd;
}

static void udq_init(struct udq *q, int fd)
{
	q->fd = fd;
	q->n = 0;
	q->buf = malloc(UDQ_CAP * sizeof(*q->buf));
	q->len = malloc(UDQ_CAP);
	q->dst = malloc(UDQ_CAP * sizeof(*q->dst));
	if (!q->buf || !q->len || !q->dst)
		die("malloc");
}

static void print_stats(void)
{
	fprintf(stderr,
		"iwpm-floor: stats: loops %lu recv_calls %lu nl_in %lu dgrams/%lu msgs nl_out %lu msgs/%lu calls "
		"nl_send_errors %lu nl_foreign %lu nl_trunc %lu udp_in %lu udp_out %lu/%lu calls udp_send_errors %lu "
		"udp_bad %lu\n",
		st.loops, st.recv_calls, st.nl_in_dgrams, st.nl_in_msgs, st.nl_out_msgs, st.nl_out_calls,
		st.nl_send_errors, st.nl_foreign, st.nl_trunc, st.udp_in, st.udp_out, st.udp_out_calls,
		st.udp_send_errors, st.udp_bad);
	fprintf(stderr,
		"iwpm-floor: stats: reg_pid %lu adds %lu queries %lu removes %lu (unknown %lu) rquery ok %lu rej %lu "
		"remote_info %lu req_in %lu acc_in %lu ack_in %lu rej_in %lu rej_out %lu acc_unmatched %lu "
		"handle_err %lu binds %lu probes_failed %lu fallbacks %lu reserve_failed %lu mappings %u\n",
		st.reg_pid, st.adds, st.queries, st.removes, st.remove_unknown, st.rquery_ok, st.rquery_rej,
		st.remote_info, st.req_in, st.acc_in, st.ack_in, st.rej_in, st.rej_out, st.acc_unmatched,
		st.handle_err, st.binds, st.probes_failed, st.fallbacks, st.reserve_failed, index_count);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-s") != 0 && strcmp(argv[i], "--systemd") != 0) {
			fprintf(stderr, "usage: %s [-s]   (bench-only IWPM floor; see bench/README.md)\n", argv[0]);
			return 2;
		}
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stderr, NULL, _IOLBF, 0);

	read_port_config();
	if (getrandom(&handle_state, sizeof(handle_state), 0) != sizeof(handle_state))
		handle_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
	index_init(1u << 16);
	nlq_buf = malloc((size_t)NLQ_CAP * NLQ_SLOT);
	nl_rbuf = malloc((size_t)RECV_BATCH * NL_SLOT);
	udp_rbuf = malloc((size_t)RECV_BATCH * UDP_SLOT);
	if (!nlq_buf || !nl_rbuf || !udp_rbuf)
		die("malloc");

	/* UDP: server 0.0.0.0:3935 (REQ/ACK in, ACC/REJ out), client 0.0.0.0:0 (REQ/ACK out, ACC/REJ in) */
	srv_fd = udp_socket(IWARP_PM_PORT);
	cli_fd = udp_socket(0);
	udq_init(&q_srv, srv_fd);
	udq_init(&q_cli, cli_fd);

	/* netlink, as rdma-core: nl_pid = getpid(), groups 3 (RDMA_NL_GROUP_IWPM is bit 0x2) */
	nl_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_RDMA);
	if (nl_fd < 0)
		die("socket(AF_NETLINK, NETLINK_RDMA)");
	long rbuf = config_rbuf();
	if (rbuf <= 0)
		rbuf = 4L << 20;
	if (rbuf > 0x7fffffff)
		rbuf = 0x7fffffff;
	set_buf(nl_fd, SO_RCVBUFFORCE, SO_RCVBUF, (int)rbuf);
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK, .nl_pid = (uint32_t)getpid(), .nl_groups = 3 };
	if (bind(nl_fd, (struct sockaddr *)&nl, sizeof(nl)) < 0) {
		if (errno != EADDRINUSE)
			die("bind(netlink)");
		nl.nl_pid = 0;
		if (bind(nl_fd, (struct sockaddr *)&nl, sizeof(nl)) < 0)
			die("bind(netlink, autobind)");
	}
	socklen_t nlen = sizeof(nl);
	if (getsockname(nl_fd, (struct sockaddr *)&nl, &nlen) < 0)
		die("getsockname(netlink)");
	my_port_id = nl.nl_pid;

	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.u32 = 0;
	epoll_ctl(ep, EPOLL_CTL_ADD, nl_fd, &ev);
	ev.data.u32 = 1;
	epoll_ctl(ep, EPOLL_CTL_ADD, srv_fd, &ev);
	ev.data.u32 = 2;
	epoll_ctl(ep, EPOLL_CTL_ADD, cli_fd, &ev);

	fprintf(stderr, "iwpm-floor: pid %d netlink port id %u, ports %u-%u; bench-only floor, not a port mapper\n",
		(int)getpid(), my_port_id, port_low, port_high);
	send_hello();
	flush_nl();

	struct epoll_event evs[4];
	while (!stop_flag) {
		int n = epoll_wait(ep, evs, 4, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		st.loops++;
		for (int i = 0; i < n; i++) {
			switch (evs[i].data.u32) {
			case 0:
				drain_netlink();
				break;
			case 1:
				drain_udp(&q_srv);
				break;
			case 2:
				drain_udp(&q_cli);
				break;
			}
		}
		/* netlink first: a REMOTE_INFO reaches the kernel before its ACC leaves */
		if (nlq_n)
			flush_nl();
		if (q_srv.n)
			flush_udp(&q_srv);
		if (q_cli.n)
			flush_udp(&q_cli);
	}
	print_stats();
	return 0;
}
