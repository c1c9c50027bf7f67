/*
 * nlredirect.c - LD_PRELOAD shim that lets an unmodified rdma-core iwpmd run
 * against a user-space kernel simulator on a machine without NETLINK_RDMA.
 *
 * Written for the iwpmd-ts test suite (test/ref/). Environment:
 *
 *   IWPMD_SHIM_KERNEL_PORT     netlink port id of the kernel simulator. Every
 *                              send to nl_pid 0 on a redirected socket goes
 *                              there; every datagram received from it is shown
 *                              to the program as coming from nl_pid 0.
 *   IWPMD_SHIM_NL_PROTOCOL     protocol used instead of NETLINK_RDMA (20).
 *                              Default 2 (NETLINK_USERSOCK).
 *   IWPMD_SHIM_NL_GROUPS       if set: group bitmask bound instead of the one
 *                              the program asks for (iwpmd asks for 3), so
 *                              parallel tests can use distinct multicast
 *                              groups. Received multicasts are then shown with
 *                              nl_groups = 2 (RDMA_NL_GROUP_IWPM's bit).
 *   IWPMD_SHIM_UDP_PORT        bind() of a UDP socket to port 3935 binds this
 *                              port instead.
 *   IWPMD_SHIM_PEER_UDP_PORT   sendto()/sendmsg() to UDP port 3935 go to this
 *                              port instead; datagrams received from this port
 *                              are shown as coming from 3935.
 *   IWPMD_SHIM_CONFIG          fopen("/etc/iwpmd.conf") opens this path
 *                              instead (a missing path = no config file).
 *   IWPMD_SHIM_LOG             file that syslog lines (and shim notes) are
 *                              appended to; default stderr.
 *   IWPMD_SHIM_SYSLOG_PASSTHROUGH=1  also call the real syslog.
 *   IWPMD_SHIM_DEBUG=1         log every redirected netlink datagram.
 *
 * Redirected calls: socket, bind, close, sendto, send, sendmsg, sendmmsg,
 * recvfrom, recv, recvmsg, recvmmsg, fopen, syslog (rdma-core's iwpmd uses
 * sendto/recvfrom; sendmmsg/recvmmsg serve bench/floor/iwpm-floor.c).
 *
 * Log line format (one write(2) per line):
 *   <unix seconds>.<microseconds> <source> <text>
 * where <source> is "syslog.<level>" (e.g. syslog.warning) or "shim".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define NETLINK_RDMA_PROTO 20
#define IWPM_UDP_PORT 3935
#define IWPM_GROUP_MASK 2u
#define MAX_TRACKED_FD 65536

/* ---- real functions --------------------------------------------------- */

typedef int (*socket_fn)(int, int, int);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*close_fn)(int);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);
typedef int (*recvmmsg_fn)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef void (*vsyslog_fn)(int, const char *, va_list);
typedef void (*vsyslog_chk_fn)(int, int, const char *, va_list);

static socket_fn real_socket;
static bind_fn real_bind;
static close_fn real_close;
static sendto_fn real_sendto;
static send_fn real_send;
static sendmsg_fn real_sendmsg;
static recvfrom_fn real_recvfrom;
static recvmsg_fn real_recvmsg;
static sendmmsg_fn real_sendmmsg;
static recvmmsg_fn real_recvmmsg;
static fopen_fn real_fopen;
static vsyslog_fn real_vsyslog;
static vsyslog_chk_fn real_vsyslog_chk;

#define RESOLVE(var, name) \
	do { \
		if (!__atomic_load_n(&var, __ATOMIC_ACQUIRE)) \
			__atomic_store_n(&var, (__typeof__(var))dlsym(RTLD_NEXT, name), __ATOMIC_RELEASE); \
	} while (0)

/* ---- configuration (read once, before main) ---------------------------- */

static long cfg_kernel_port = -1;   /* -1: not set */
static int cfg_nl_protocol = 2;     /* NETLINK_USERSOCK */
static long cfg_nl_groups = -1;     /* -1: keep the program's bitmask */
static long cfg_udp_port = -1;
static long cfg_peer_udp_port = -1;
static const char *cfg_config; /* NULL: do not redirect the config file */
static int cfg_passthrough;
static int cfg_debug;
static int log_fd = 2;

/* 1 = this fd is a NETLINK_RDMA socket we redirected. Accessed atomically. */
static unsigned char tracked[MAX_TRACKED_FD];

static int is_tracked(int fd)
{
	return fd >= 0 && fd < MAX_TRACKED_FD && __atomic_load_n(&tracked[fd], __ATOMIC_ACQUIRE);
}

static void set_tracked(int fd, unsigned char v)
{
	if (fd >= 0 && fd < MAX_TRACKED_FD)
		__atomic_store_n(&tracked[fd], v, __ATOMIC_RELEASE);
}

static long env_long(const char *name, long lo, long hi)
{
	const char *s = getenv(name);
	char *end;
	long v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || *end || v < lo || v > hi)
		return -1;
	return v;
}

/* ---- logging ------------------------------------------------------------ */

static void log_write(const char *source, const char *text)
{
	char line[2048];
	struct timespec ts;
	size_t n, tl;
	int len;

	clock_gettime(CLOCK_REALTIME, &ts);
	len = snprintf(line, sizeof(line) - 2, "%lld.%06ld %s ", (long long)ts.tv_sec,
		       ts.tv_nsec / 1000, source);
	if (len < 0)
		return;
	n = (size_t)len;
	tl = strlen(text);
	while (tl && (text[tl - 1] == '\n' || text[tl - 1] == '\r'))
		tl--;
	if (tl > sizeof(line) - 2 - n)
		tl = sizeof(line) - 2 - n;
	memcpy(line + n, text, tl);
	n += tl;
	line[n++] = '\n';
	/* one write per line: lines from different threads never interleave */
	while (write(log_fd, line, n) < 0 && errno == EINTR)
		;
}

static void shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void shim_log(const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_write("shim", text);
	errno = saved;
}

__attribute__((constructor)) static void shim_init(void)
{
	const char *path = getenv("IWPMD_SHIM_LOG");
	long v;

	RESOLVE(real_socket, "socket");
	RESOLVE(real_bind, "bind");
	RESOLVE(real_close, "close");
	RESOLVE(real_sendto, "sendto");
	RESOLVE(real_send, "send");
	RESOLVE(real_sendmsg, "sendmsg");
	RESOLVE(real_recvfrom, "recvfrom");
	RESOLVE(real_recvmsg, "recvmsg");
	RESOLVE(real_sendmmsg, "sendmmsg");
	RESOLVE(real_recvmmsg, "recvmmsg");
	RESOLVE(real_fopen, "fopen");
	RESOLVE(real_vsyslog, "vsyslog");
	RESOLVE(real_vsyslog_chk, "__vsyslog_chk");

	cfg_config = getenv("IWPMD_SHIM_CONFIG");
	if (path && *path) {
		int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0)
			log_fd = fd;
	}
	cfg_kernel_port = env_long("IWPMD_SHIM_KERNEL_PORT", 1, 0xffffffffL);
	v = env_long("IWPMD_SHIM_NL_PROTOCOL", 0, 31);
	if (v >= 0)
		cfg_nl_protocol = (int)v;
	cfg_nl_groups = env_long("IWPMD_SHIM_NL_GROUPS", 0, 0xffffffffL);
	cfg_udp_port = env_long("IWPMD_SHIM_UDP_PORT", 0, 65535);
	cfg_peer_udp_port = env_long("IWPMD_SHIM_PEER_UDP_PORT", 1, 65535);
	v = env_long("IWPMD_SHIM_SYSLOG_PASSTHROUGH", 0, 1);
	cfg_passthrough = v == 1;
	v = env_long("IWPMD_SHIM_DEBUG", 0, 1);
	cfg_debug = v == 1;

	shim_log("loaded pid=%d kernel_port=%ld nl_protocol=%d nl_groups=%ld udp_port=%ld peer_udp_port=%ld config=%s",
		 (int)getpid(), cfg_kernel_port, cfg_nl_protocol, cfg_nl_groups, cfg_udp_port,
		 cfg_peer_udp_port, cfg_config ? cfg_config : "(default)");
	if (cfg_kernel_port < 0)
		shim_log("warning: IWPMD_SHIM_KERNEL_PORT not set; netlink sends to port 0 are not redirected");
}

/* ---- socket / close ----------------------------------------------------- */

int socket(int domain, int type, int protocol)
{
	int fd, redirect = 0;

	RESOLVE(real_socket, "socket");
	if (domain == AF_NETLINK && protocol == NETLINK_RDMA_PROTO) {
		protocol = cfg_nl_protocol;
		redirect = 1;
	}
	fd = real_socket(domain, type, protocol);
	if (fd >= 0) {
		set_tracked(fd, (unsigned char)redirect);
		if (redirect) {
			if (fd >= MAX_TRACKED_FD)
				shim_log("error: netlink fd %d too large to track", fd);
			shim_log("socket(AF_NETLINK, NETLINK_RDMA) -> protocol %d, fd %d", protocol, fd);
		}
	}
	return fd;
}

int close(int fd)
{
	RESOLVE(real_close, "close");
	if (is_tracked(fd))
		set_tracked(fd, 0);
	return real_close(fd);
}

/* ---- address helpers ---------------------------------------------------- */

static int sock_type(int fd)
{
	int type = 0;
	socklen_t len = sizeof(type);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return -1;
	return type;
}

/* Port of an AF_INET/AF_INET6 address, host order; -1 for other families. */
static int inet_port(const struct sockaddr *sa, socklen_t len)
{
	if (!sa)
		return -1;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return -1;
}

static void set_inet_port(struct sockaddr *sa, int port)
{
	if (sa->sa_family == AF_INET)
		((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
}

/*
 * Rewrite an outgoing destination into *out (a copy). Returns 1 when *out
 * should be used instead of the caller's address.
 */
static int rewrite_dest_cached(int fd, const struct sockaddr *sa, socklen_t len, struct sockaddr_storage *out,
			       const void *buf, size_t buflen, int *type_cache);

static int rewrite_dest(int fd, const struct sockaddr *sa, socklen_t len, struct sockaddr_storage *out,
			const void *buf, size_t buflen)
{
	int type = -2;

	return rewrite_dest_cached(fd, sa, len, out, buf, buflen, &type);
}

/* *type_cache: the fd's SO_TYPE once looked up (-2: not yet), so a batch costs one getsockopt. */
static int rewrite_dest_cached(int fd, const struct sockaddr *sa, socklen_t len, struct sockaddr_storage *out,
			       const void *buf, size_t buflen, int *type_cache)
{
	if (!sa)
		return 0;
	if (is_tracked(fd) && sa->sa_family == AF_NETLINK && len >= sizeof(struct sockaddr_nl)) {
		const struct sockaddr_nl *nl = (const struct sockaddr_nl *)sa;
		if (nl->nl_pid == 0 && nl->nl_groups == 0 && cfg_kernel_port > 0) {
			struct sockaddr_nl *o = (struct sockaddr_nl *)out;
			memset(out, 0, sizeof(*out));
			memcpy(o, nl, sizeof(*nl));
			o->nl_pid = (uint32_t)cfg_kernel_port;
			if (cfg_debug && buf && buflen >= sizeof(struct nlmsghdr)) {
				const struct nlmsghdr *h = buf;
				shim_log("nl send fd=%d len=%zu type=0x%04x flags=0x%x seq=%u pid=%u -> port %ld",
					 fd, buflen, h->nlmsg_type, h->nlmsg_flags, h->nlmsg_seq, h->nlmsg_pid,
					 cfg_kernel_port);
			}
			return 1;
		}
		return 0;
	}
	if (cfg_peer_udp_port > 0 && inet_port(sa, len) == IWPM_UDP_PORT &&
	    (*type_cache == -2 ? (*type_cache = sock_type(fd)) : *type_cache) == SOCK_DGRAM) {
		size_t n = len < sizeof(*out) ? len : sizeof(*out);
		memset(out, 0, sizeof(*out));
		memcpy(out, sa, n);
		set_inet_port((struct sockaddr *)out, (int)cfg_peer_udp_port);
		return 1;
	}
	return 0;
}

/* Rewrite a received source address in place. */
static void rewrite_src(int fd, struct sockaddr *sa, socklen_t len, const void *buf, ssize_t got)
{
	if (!sa || len == 0)
		return;
	if (is_tracked(fd) && sa->sa_family == AF_NETLINK && len >= sizeof(struct sockaddr_nl)) {
		struct sockaddr_nl *nl = (struct sockaddr_nl *)sa;
		uint32_t from = nl->nl_pid;
		if (cfg_kernel_port > 0 && nl->nl_pid == (uint32_t)cfg_kernel_port) {
			nl->nl_pid = 0;
			if (cfg_nl_groups >= 0 && nl->nl_groups)
				nl->nl_groups = IWPM_GROUP_MASK;
		}
		if (cfg_debug && buf && got >= (ssize_t)sizeof(struct nlmsghdr)) {
			const struct nlmsghdr *h = buf;
			shim_log("nl recv fd=%d len=%zd type=0x%04x flags=0x%x seq=%u pid=%u from port %u groups 0x%x",
				 fd, got, h->nlmsg_type, h->nlmsg_flags, h->nlmsg_seq, h->nlmsg_pid, from,
				 nl->nl_groups);
		}
		return;
	}
	if (cfg_peer_udp_port > 0 && inet_port(sa, len) == cfg_peer_udp_port)
		set_inet_port(sa, IWPM_UDP_PORT);
}

/* ---- bind ---------------------------------------------------------------- */

int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage copy;
	int ret, port;

	RESOLVE(real_bind, "bind");
	if (is_tracked(fd) && sa && sa->sa_family == AF_NETLINK && len >= sizeof(struct sockaddr_nl)) {
		struct sockaddr_nl nl;
		memcpy(&nl, sa, sizeof(nl));
		if (cfg_nl_groups >= 0)
			nl.nl_groups = (uint32_t)cfg_nl_groups;
		ret = real_bind(fd, (const struct sockaddr *)&nl, sizeof(nl));
		if (ret < 0) {
			int e = errno;
			shim_log("error: netlink bind(fd %d, nl_pid %u, groups 0x%x) failed: %s%s", fd, nl.nl_pid,
				 nl.nl_groups, strerror(e),
				 e == EADDRINUSE ? " (another NETLINK_USERSOCK socket holds this port id)" : "");
			errno = e;
		} else {
			shim_log("netlink bind fd %d nl_pid %u groups 0x%x", fd, nl.nl_pid, nl.nl_groups);
		}
		return ret;
	}
	port = inet_port(sa, len);
	if (port == IWPM_UDP_PORT && cfg_udp_port >= 0 && sock_type(fd) == SOCK_DGRAM) {
		size_t n = len < sizeof(copy) ? len : sizeof(copy);
		memset(&copy, 0, sizeof(copy));
		memcpy(&copy, sa, n);
		set_inet_port((struct sockaddr *)&copy, (int)cfg_udp_port);
		ret = real_bind(fd, (const struct sockaddr *)&copy, len);
		{
			int e = errno;
			shim_log("udp bind fd %d family %d port %d -> %ld: %s", fd, sa->sa_family, IWPM_UDP_PORT,
				 cfg_udp_port, ret < 0 ? strerror(e) : "ok");
			errno = e;
		}
		return ret;
	}
	return real_bind(fd, sa, len);
}

/* ---- send ---------------------------------------------------------------- */

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage out;

	RESOLVE(real_sendto, "sendto");
	if (rewrite_dest(fd, sa, len, &out, buf, n))
		return real_sendto(fd, buf, n, flags, (const struct sockaddr *)&out, len);
	return real_sendto(fd, buf, n, flags, sa, len);
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	RESOLVE(real_send, "send");
	RESOLVE(real_sendto, "sendto");
	/* An unconnected netlink socket's send() goes to the kernel (port 0). */
	if (is_tracked(fd) && cfg_kernel_port > 0) {
		struct sockaddr_nl k = { .nl_family = AF_NETLINK, .nl_pid = 0 };
		return sendto(fd, buf, n, flags, (const struct sockaddr *)&k, sizeof(k));
	}
	return real_send(fd, buf, n, flags);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct sockaddr_storage out;

	RESOLVE(real_sendmsg, "sendmsg");
	if (msg && msg->msg_name) {
		const void *first = msg->msg_iovlen ? msg->msg_iov[0].iov_base : NULL;
		size_t firstlen = msg->msg_iovlen ? msg->msg_iov[0].iov_len : 0;
		if (rewrite_dest(fd, msg->msg_name, msg->msg_namelen, &out, first, firstlen)) {
			struct msghdr m = *msg;
			m.msg_name = &out;
			return real_sendmsg(fd, &m, flags);
		}
	} else if (msg && is_tracked(fd) && cfg_kernel_port > 0) {
		struct sockaddr_nl k = { .nl_family = AF_NETLINK, .nl_pid = (uint32_t)cfg_kernel_port };
		struct msghdr m = *msg;
		m.msg_name = &k;
		m.msg_namelen = sizeof(k);
		return real_sendmsg(fd, &m, flags);
	}
	return real_sendmsg(fd, msg, flags);
}

/*
 * sendmmsg: each message's destination is rewritten like sendmsg's, into a
 * per-thread array of copies (the caller's mmsghdr array is patched for the
 * duration of the call and restored). One real sendmmsg per call.
 */
static __thread struct sockaddr_storage *mm_addrs;
static __thread unsigned int mm_cap;

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	void *saved_stack[64];
	void **saved = saved_stack;
	unsigned int i, changed = 0;
	int ret, e, type = -2;

	RESOLVE(real_sendmmsg, "sendmmsg");
	if (!vec || vlen == 0 || (!is_tracked(fd) && cfg_peer_udp_port <= 0))
		return real_sendmmsg(fd, vec, vlen, flags);
	if (vlen > mm_cap) {
		struct sockaddr_storage *n = realloc(mm_addrs, vlen * sizeof(*n));
		if (!n) {
			errno = ENOMEM;
			return -1;
		}
		mm_addrs = n;
		mm_cap = vlen;
	}
	if (vlen > 64) {
		saved = malloc(vlen * sizeof(*saved));
		if (!saved) {
			errno = ENOMEM;
			return -1;
		}
	}
	for (i = 0; i < vlen; i++) {
		struct msghdr *m = &vec[i].msg_hdr;
		saved[i] = m->msg_name;
		if (m->msg_name) {
			const void *first = m->msg_iovlen ? m->msg_iov[0].iov_base : NULL;
			size_t firstlen = m->msg_iovlen ? m->msg_iov[0].iov_len : 0;
			if (rewrite_dest_cached(fd, m->msg_name, m->msg_namelen, &mm_addrs[i], first, firstlen, &type)) {
				m->msg_name = &mm_addrs[i];
				changed = 1;
			}
		} else if (is_tracked(fd) && cfg_kernel_port > 0) {
			struct sockaddr_nl *k = (struct sockaddr_nl *)&mm_addrs[i];
			memset(k, 0, sizeof(*k));
			k->nl_family = AF_NETLINK;
			k->nl_pid = (uint32_t)cfg_kernel_port;
			m->msg_name = k;
			m->msg_namelen = sizeof(*k);
			changed = 1;
		}
	}
	ret = real_sendmmsg(fd, vec, vlen, flags);
	e = errno;
	if (changed) {
		for (i = 0; i < vlen; i++) {
			struct msghdr *m = &vec[i].msg_hdr;
			if (m->msg_name != saved[i]) {
				if (!saved[i])
					m->msg_namelen = 0;
				m->msg_name = saved[i];
			}
		}
	}
	if (saved != saved_stack)
		free(saved);
	errno = e;
	return ret;
}

/* ---- receive -------------------------------------------------------------- */

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa, socklen_t *len)
{
	ssize_t got;
	struct sockaddr_nl tmp;
	socklen_t tmplen = sizeof(tmp);

	RESOLVE(real_recvfrom, "recvfrom");
	/* Debug logging of netlink datagrams needs the source even if the caller passes none. */
	if (!sa && is_tracked(fd) && cfg_debug) {
		got = real_recvfrom(fd, buf, n, flags, (struct sockaddr *)&tmp, &tmplen);
		if (got >= 0) {
			int e = errno;
			rewrite_src(fd, (struct sockaddr *)&tmp, tmplen, buf, got);
			errno = e;
		}
		return got;
	}
	got = real_recvfrom(fd, buf, n, flags, sa, len);
	if (got >= 0 && sa && len) {
		int e = errno;
		rewrite_src(fd, sa, *len, buf, got);
		errno = e;
	}
	return got;
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	return recvfrom(fd, buf, n, flags, NULL, NULL);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	ssize_t got;

	RESOLVE(real_recvmsg, "recvmsg");
	got = real_recvmsg(fd, msg, flags);
	if (got >= 0 && msg && msg->msg_name) {
		int e = errno;
		rewrite_src(fd, msg->msg_name, msg->msg_namelen,
			    msg->msg_iovlen ? msg->msg_iov[0].iov_base : NULL, got);
		errno = e;
	}
	return got;
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
	int got, i;

	RESOLVE(real_recvmmsg, "recvmmsg");
	got = real_recvmmsg(fd, vec, vlen, flags, timeout);
	if (got > 0) {
		int e = errno;
		for (i = 0; i < got; i++) {
			struct msghdr *m = &vec[i].msg_hdr;
			if (m->msg_name)
				rewrite_src(fd, m->msg_name, m->msg_namelen,
					    m->msg_iovlen ? m->msg_iov[0].iov_base : NULL, (ssize_t)vec[i].msg_len);
		}
		errno = e;
	}
	return got;
}

/* ---- config file ------------------------------------------------------------ */

FILE *fopen(const char *path, const char *mode)
{
	RESOLVE(real_fopen, "fopen");
	if (cfg_config && path && strcmp(path, "/etc/iwpmd.conf") == 0) {
		FILE *f = real_fopen(cfg_config, mode);
		int e = errno;
		shim_log("fopen(%s) -> %s: %s", path, cfg_config, f ? "ok" : strerror(e));
		errno = e;
		return f;
	}
	return real_fopen(path, mode);
}

/* ---- syslog --------------------------------------------------------------- */

static const char *level_name(int pri)
{
	static const char *const names[] = { "emerg", "alert", "crit", "err",
					     "warning", "notice", "info", "debug" };
	return names[LOG_PRI(pri)];
}

static void capture(int pri, const char *fmt, va_list ap)
{
	char text[1536];
	char source[32];
	va_list copy;

	va_copy(copy, ap);
	/* glibc's vsnprintf understands %m, like syslog does */
	vsnprintf(text, sizeof(text), fmt, copy);
	va_end(copy);
	snprintf(source, sizeof(source), "syslog.%s", level_name(pri));
	log_write(source, text);
}

void vsyslog(int pri, const char *fmt, va_list ap)
{
	int saved = errno;

	capture(pri, fmt, ap);
	if (cfg_passthrough) {
		RESOLVE(real_vsyslog, "vsyslog");
		errno = saved;
		if (real_vsyslog)
			real_vsyslog(pri, fmt, ap);
	}
	errno = saved;
}

void syslog(int pri, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsyslog(pri, fmt, ap);
	va_end(ap);
}

void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap)
{
	int saved = errno;

	capture(pri, fmt, ap);
	if (cfg_passthrough) {
		RESOLVE(real_vsyslog_chk, "__vsyslog_chk");
		errno = saved;
		if (real_vsyslog_chk)
			real_vsyslog_chk(pri, flag, fmt, ap);
	}
	errno = saved;
}

void __syslog_chk(int pri, int flag, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	__vsyslog_chk(pri, flag, fmt, ap);
	va_end(ap);
}
