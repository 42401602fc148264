/*
 * net.elf - polled virtio-net driver over virtio-mmio v2 (virtio 1.2 §5.1), with just enough
 * ARP, IPv4, ICMP and TCP to resolve a peer, ping it, and fetch a value from the metadata
 * service (MMDS v2: PUT /latest/api/token, then GET with X-metadata-token). Runs on the first
 * virtio-mmio device with DeviceID 1 named on the command line. See README.md for the lines.
 *
 * Command line (all optional):
 *   net.ip=A.B.C.D      our address            (default 172.16.0.2)
 *   net.peer=A.B.C.D    peer to ARP and ping   (default 172.16.0.1; "none" skips)
 *   net.mmds=A.B.C.D    metadata service       (default 169.254.169.254; "none" skips)
 *   net.path=/x/y       MMDS path to GET       (default /latest/meta-data/instance-id)
 *
 * No offloads are negotiated (VERSION_1, MAC, MTU, STATUS only): frames carry full checksums and
 * each receive buffer holds one whole frame (num_buffers is 1).
 */
#include "virtio.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_NET_F_MTU 3
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define NET_CFG_MAC 0
#define NET_CFG_STATUS 6
#define NET_CFG_MTU 10

#define NET_HDR 12 /* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define RXQ 0
#define TXQ 1
#define BUF_SIZE 2048
#define MAX_POLLS 200000 /* per wait; each idle poll is one VM exit (about 1.7 s on the emulated KVM) */
#define RESPONSE_POLLS 2000000

#define ETH_HLEN 14
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define MMDS_PORT 80
#define LOCAL_PORT 49152 /* + the request number: each request gets a fresh connection */

struct nq {
	struct vq_mem *vq;
	uint16_t size;
	uint16_t avail_idx;
	uint16_t last_used;
};

static struct vq_mem vqs[2];
static struct nq q[2];
static uint8_t rxbuf[VQ_MAX][BUF_SIZE] __attribute__((aligned(64)));
static uint8_t txbuf[BUF_SIZE] __attribute__((aligned(64)));
static uint64_t base;
static uint8_t my_mac[6];
static uint32_t my_ip, peer_ip, mmds_ip;
static uint32_t rx_frames, tx_frames, arp_answered, echo_answered;

/* ---- byte order and checksums ---------------------------------------- */

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }

static uint32_t sum16(const uint8_t *p, unsigned n, uint32_t s)
{
	for (; n > 1; n -= 2, p += 2)
		s += get16(p);
	if (n)
		s += (uint32_t)p[0] << 8;
	return s;
}

static uint16_t fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xFFFF) + (s >> 16);
	return (uint16_t)~s;
}

static int parse_ip(const char *s, uint32_t *out)
{
	uint32_t v = 0;
	for (int part = 0; part < 4; part++) {
		uint32_t x = 0;
		int digits = 0;
		while (*s >= '0' && *s <= '9' && digits < 4) {
			x = x * 10 + (uint32_t)(*s++ - '0');
			digits++;
		}
		if (!digits || x > 255 || (part < 3 && *s++ != '.'))
			return 0;
		v = v << 8 | x;
	}
	if (*s)
		return 0;
	*out = v;
	return 1;
}

static void ip_param(const char *key, uint32_t def, uint32_t *out)
{
	char buf[32];
	*out = def;
	if (kt_cmdline_get(key, buf, sizeof(buf))) {
		if (kt_strncmp(buf, "none", 5) == 0)
			*out = 0;
		else if (!parse_ip(buf, out))
			kt_printf("KT: FAIL net bad %s=%s\n", key, buf);
	}
}

static void print_mac(const char *prefix, const uint8_t *m)
{
	kt_printf("%s%02x:%02x:%02x:%02x:%02x:%02x\n", prefix, m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* ---- transport -------------------------------------------------------- */

static uint8_t cfg8(unsigned off) { return (uint8_t)(mmio_read32(base + VIRTIO_MMIO_CONFIG + (off & ~3u)) >> (8 * (off & 3))); }

static void set_status(uint32_t bits)
{
	mmio_write32(base + VIRTIO_MMIO_STATUS, mmio_read32(base + VIRTIO_MMIO_STATUS) | bits);
}

/* §3.1.1 and §4.2.3: features, then both queues, then DRIVER_OK. Returns 0 or a reason. */
static const char *net_init(uint64_t *features)
{
	mmio_write32(base + VIRTIO_MMIO_STATUS, 0);
	for (int i = 0; i < 1000 && mmio_read32(base + VIRTIO_MMIO_STATUS); i++)
		;
	set_status(VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(VIRTIO_STATUS_DRIVER);
	mmio_write32(base + VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t off = mmio_read32(base + VIRTIO_MMIO_DEVICE_FEATURES);
	mmio_write32(base + VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	off |= (uint64_t)mmio_read32(base + VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	if (!(off & FEATURE(VIRTIO_F_VERSION_1)))
		return "VERSION_1 not offered";
	uint64_t want = FEATURE(VIRTIO_F_VERSION_1) | FEATURE(VIRTIO_NET_F_MAC) | FEATURE(VIRTIO_NET_F_MTU) |
			FEATURE(VIRTIO_NET_F_STATUS);
	*features = off & want;
	mmio_write32(base + VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	mmio_write32(base + VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)*features);
	mmio_write32(base + VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	mmio_write32(base + VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(*features >> 32));
	set_status(VIRTIO_STATUS_FEATURES_OK);
	if (!(mmio_read32(base + VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return "FEATURES_OK not accepted";
	for (unsigned i = 0; i < 2; i++) {
		mmio_write32(base + VIRTIO_MMIO_QUEUE_SEL, i);
		uint32_t max = mmio_read32(base + VIRTIO_MMIO_QUEUE_NUM_MAX);
		if (max == 0)
			return "queue missing";
		uint16_t size = VQ_MAX;
		while (size > max)
			size >>= 1;
		q[i].vq = &vqs[i];
		q[i].size = size;
		q[i].avail_idx = 0;
		q[i].last_used = 0;
		memset(&vqs[i], 0, sizeof(vqs[i]));
		KT_BARRIER();
		uint64_t d = (uintptr_t)vqs[i].desc, a = (uintptr_t)&vqs[i].avail, u = (uintptr_t)&vqs[i].used;
		mmio_write32(base + VIRTIO_MMIO_QUEUE_NUM, size);
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)d);
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(d >> 32));
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)a);
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(a >> 32));
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)u);
		mmio_write32(base + VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(u >> 32));
		mmio_write32(base + VIRTIO_MMIO_QUEUE_READY, 1);
	}
	set_status(VIRTIO_STATUS_DRIVER_OK);
	if (mmio_read32(base + VIRTIO_MMIO_STATUS) & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return "device failed at DRIVER_OK";
	/* Every receive buffer is one device-writable descriptor (§5.1.6.3). */
	struct nq *r = &q[RXQ];
	for (uint16_t i = 0; i < r->size; i++) {
		r->vq->desc[i].addr = (uintptr_t)rxbuf[i];
		r->vq->desc[i].len = BUF_SIZE;
		r->vq->desc[i].flags = VIRTQ_DESC_F_WRITE;
		r->vq->avail.ring[i] = i;
	}
	KT_BARRIER();
	r->avail_idx = r->size;
	r->vq->avail.idx = r->avail_idx;
	KT_BARRIER();
	mmio_write32(base + VIRTIO_MMIO_QUEUE_NOTIFY, RXQ);
	return 0;
}

static void ack_interrupt(void)
{
	uint32_t isr = mmio_read32(base + VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		mmio_write32(base + VIRTIO_MMIO_INTERRUPT_ACK, isr);
}

/* Sends txbuf[NET_HDR .. NET_HDR+len) with a zero header; waits for the device to use it. */
static int tx(unsigned len)
{
	struct nq *t = &q[TXQ];
	memset(txbuf, 0, NET_HDR);
	t->vq->desc[0].addr = (uintptr_t)txbuf;
	t->vq->desc[0].len = NET_HDR + len;
	t->vq->desc[0].flags = 0;
	t->vq->avail.ring[t->avail_idx % t->size] = 0;
	KT_BARRIER();
	t->avail_idx++;
	t->vq->avail.idx = t->avail_idx;
	KT_BARRIER();
	mmio_write32(base + VIRTIO_MMIO_QUEUE_NOTIFY, TXQ);
	for (unsigned i = 0; i < MAX_POLLS; i++) {
		if (*(volatile uint16_t *)&t->vq->used.idx != t->last_used) {
			t->last_used++;
			tx_frames++;
			ack_interrupt();
			return 1;
		}
		kt_io_delay(1);
	}
	return 0;
}

/* Returns the next received frame (without the header) and its length, or 0 if none is there. */
static uint8_t *rx_peek(unsigned *len, uint16_t *id)
{
	struct nq *r = &q[RXQ];
	if (*(volatile uint16_t *)&r->vq->used.idx == r->last_used)
		return 0;
	KT_BARRIER();
	volatile struct virtq_used_elem *e = &r->vq->used.ring[r->last_used % r->size];
	*id = (uint16_t)e->id;
	uint32_t l = e->len;
	r->last_used++;
	rx_frames++;
	if (*id >= r->size || l < NET_HDR + ETH_HLEN || l > BUF_SIZE) {
		*len = 0;
		return rxbuf[*id % r->size];
	}
	*len = l - NET_HDR;
	return rxbuf[*id] + NET_HDR;
}

static void rx_done(uint16_t id)
{
	struct nq *r = &q[RXQ];
	r->vq->avail.ring[r->avail_idx % r->size] = id;
	KT_BARRIER();
	r->avail_idx++;
	r->vq->avail.idx = r->avail_idx;
	KT_BARRIER();
	mmio_write32(base + VIRTIO_MMIO_QUEUE_NOTIFY, RXQ);
	ack_interrupt();
}

/* ---- frames ----------------------------------------------------------- */

static uint8_t *eth(const uint8_t *dst, uint16_t type)
{
	uint8_t *f = txbuf + NET_HDR;
	memcpy(f, dst, 6);
	memcpy(f + 6, my_mac, 6);
	put16(f + 12, type);
	return f + ETH_HLEN;
}

static int send_arp(uint16_t op, const uint8_t *tha, uint32_t tpa)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	uint8_t *a = eth(op == 1 ? bcast : tha, ETHERTYPE_ARP);
	put16(a, 1);
	put16(a + 2, ETHERTYPE_IPV4);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, my_mac, 6);
	put32(a + 14, my_ip);
	if (op == 1)
		memset(a + 18, 0, 6);
	else
		memcpy(a + 18, tha, 6);
	put32(a + 24, tpa);
	return tx(ETH_HLEN + 28);
}

static uint8_t *ipv4(const uint8_t *dst_mac, uint32_t dst, uint8_t proto, unsigned payload)
{
	static uint16_t id = 1;
	uint8_t *ip = eth(dst_mac, ETHERTYPE_IPV4);
	memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(20 + payload));
	put16(ip + 4, id++);
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = proto;
	put32(ip + 12, my_ip);
	put32(ip + 16, dst);
	put16(ip + 10, fold(sum16(ip, 20, 0)));
	return ip + 20;
}

/* An IPv4 packet for us in frame f: returns its payload, sets proto/src/len; 0 otherwise. */
static const uint8_t *ipv4_in(const uint8_t *f, unsigned len, uint8_t *proto, uint32_t *src, unsigned *plen)
{
	if (len < ETH_HLEN + 20 || get16(f + 12) != ETHERTYPE_IPV4)
		return 0;
	const uint8_t *ip = f + ETH_HLEN;
	unsigned ihl = (ip[0] & 15) * 4u, total = get16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || ETH_HLEN + total > len || get32(ip + 16) != my_ip)
		return 0;
	if (fold(sum16(ip, ihl, 0)) != 0)
		return 0;
	*proto = ip[9];
	*src = get32(ip + 12);
	*plen = total - ihl;
	return ip + ihl;
}

/*
 * Handles frames nobody waits for: answers ARP requests for our address and ICMP echo requests
 * to it (so that another guest can ping this one).
 */
static void background(const uint8_t *f, unsigned len)
{
	if (len >= ETH_HLEN + 28 && get16(f + 12) == ETHERTYPE_ARP && get16(f + 20) == 1 && get32(f + 38) == my_ip) {
		uint8_t sha[6];
		memcpy(sha, f + 22, 6);
		uint32_t spa = get32(f + 28);
		arp_answered++;
		send_arp(2, sha, spa);
		return;
	}
	unsigned plen;
	uint8_t proto;
	uint32_t src;
	const uint8_t *p = ipv4_in(f, len, &proto, &src, &plen);
	/* An echo request (type 8) with a valid checksum, small enough for one transmit buffer. */
	if (!p || proto != IPPROTO_ICMP || plen < 8 || plen > 1024 || p[0] != 8 || fold(sum16(p, plen, 0)) != 0)
		return;
	uint8_t smac[6];
	memcpy(smac, f + 6, 6);
	uint8_t *ic = ipv4(smac, src, IPPROTO_ICMP, plen);
	memcpy(ic, p, plen);
	ic[0] = 0; /* echo reply: same id, sequence and data */
	put16(ic + 2, 0);
	put16(ic + 2, fold(sum16(ic, plen, 0)));
	echo_answered++;
	tx(ETH_HLEN + 20 + plen);
}

/* Serves ARP and echo requests for `polls` polls (net.linger): a peer may still be pinging us. */
static void linger(unsigned polls)
{
	for (unsigned i = 0; i < polls; i++) {
		unsigned len;
		uint16_t id;
		const uint8_t *f = rx_peek(&len, &id);
		if (!f) {
			kt_io_delay(1);
			continue;
		}
		background(f, len);
		rx_done(id);
	}
}

/* Resolves ip's MAC into mac; returns 0 on timeout. */
static int arp_resolve(uint32_t ip, uint8_t *mac)
{
	/* A request every MAX_POLLS / 10 polls: a peer that was not up for the first one (a NIC
	 * drops frames before its driver is ready) answers a later one soon after it comes up. */
	for (int attempt = 0; attempt < 30; attempt++) {
		if (!send_arp(1, 0, ip))
			return 0;
		for (unsigned i = 0; i < MAX_POLLS / 10; i++) {
			unsigned len;
			uint16_t id;
			const uint8_t *f = rx_peek(&len, &id);
			if (!f) {
				kt_io_delay(1);
				continue;
			}
			int hit = len >= ETH_HLEN + 28 && get16(f + 12) == ETHERTYPE_ARP && get16(f + 20) == 2 && get32(f + 28) == ip;
			if (hit)
				memcpy(mac, f + 22, 6);
			else
				background(f, len);
			rx_done(id);
			if (hit)
				return 1;
		}
	}
	return 0;
}

/* One ICMP echo; returns the reply's TTL, or -1 on timeout. */
static int ping(const uint8_t *mac, uint16_t seq)
{
	uint8_t *ic = ipv4(mac, peer_ip, IPPROTO_ICMP, 8 + 32);
	ic[0] = 8;
	ic[1] = 0;
	put16(ic + 2, 0);
	put16(ic + 4, 0x6b74); /* "kt" */
	put16(ic + 6, seq);
	for (int i = 0; i < 32; i++)
		ic[8 + i] = (uint8_t)i;
	put16(ic + 2, fold(sum16(ic, 40, 0)));
	if (!tx(ETH_HLEN + 20 + 40))
		return -1;
	for (unsigned i = 0; i < MAX_POLLS; i++) {
		unsigned len, plen;
		uint16_t id;
		uint8_t proto;
		uint32_t src;
		const uint8_t *f = rx_peek(&len, &id);
		if (!f) {
			kt_io_delay(1);
			continue;
		}
		const uint8_t *p = ipv4_in(f, len, &proto, &src, &plen);
		int hit = p && proto == IPPROTO_ICMP && src == peer_ip && plen >= 8 && p[0] == 0 && get16(p + 4) == 0x6b74 &&
			  get16(p + 6) == seq && fold(sum16(p, plen, 0)) == 0;
		int ttl = hit ? f[ETH_HLEN + 8] : 0;
		if (!hit)
			background(f, len);
		rx_done(id);
		if (hit)
			return ttl;
	}
	return -1;
}

/* ---- TCP client (one connection, in order, for the metadata service) --- */

static struct {
	uint8_t mac[6];
	uint16_t port;
	uint32_t snd_nxt, rcv_nxt;
	int fin;
	char data[4096];
	unsigned len;
} tc;

static int tcp_send(uint8_t flags, const char *data, unsigned n, int mss)
{
	unsigned opt = mss ? 4 : 0;
	uint8_t *t = ipv4(tc.mac, mmds_ip, IPPROTO_TCP, 20 + opt + n);
	memset(t, 0, 20 + opt);
	put16(t, tc.port);
	put16(t + 2, MMDS_PORT);
	put32(t + 4, tc.snd_nxt);
	put32(t + 8, flags & TCP_ACK ? tc.rcv_nxt : 0);
	t[12] = (uint8_t)((20 + opt) / 4 << 4);
	t[13] = flags;
	put16(t + 14, 65535);
	if (mss) {
		t[20] = 2;
		t[21] = 4;
		put16(t + 22, 1460);
	}
	memcpy(t + 20 + opt, data, n);
	uint32_t len = 20 + opt + n;
	uint32_t ph = (my_ip >> 16) + (my_ip & 0xFFFF) + (mmds_ip >> 16) + (mmds_ip & 0xFFFF) + IPPROTO_TCP + len;
	put16(t + 16, fold(sum16(t, len, ph)));
	return tx(ETH_HLEN + 20 + len);
}

/* Processes one received segment; returns its flags, or -1 if it was not ours. */
static int tcp_in(const uint8_t *f, unsigned len)
{
	unsigned plen;
	uint8_t proto;
	uint32_t src;
	const uint8_t *t = ipv4_in(f, len, &proto, &src, &plen);
	if (!t || proto != IPPROTO_TCP || src != mmds_ip || plen < 20 || get16(t + 2) != tc.port)
		return -1;
	uint32_t ph = (src >> 16) + (src & 0xFFFF) + (my_ip >> 16) + (my_ip & 0xFFFF) + IPPROTO_TCP + plen;
	if (fold(sum16(t, plen, ph)) != 0)
		return -1;
	uint8_t flags = t[13];
	unsigned off = (t[12] >> 4) * 4u;
	if (off < 20 || off > plen)
		return -1;
	uint32_t seq = get32(t + 4);
	if (flags & TCP_SYN) {
		tc.rcv_nxt = seq + 1;
		return flags;
	}
	unsigned n = plen - off;
	if (n && seq == tc.rcv_nxt) {
		unsigned take = n;
		if (tc.len + take > sizeof(tc.data) - 1)
			take = sizeof(tc.data) - 1 - tc.len;
		memcpy(tc.data + tc.len, t + off, take);
		tc.len += take;
		tc.data[tc.len] = 0;
		tc.rcv_nxt += n;
	}
	if ((flags & TCP_FIN) && seq + n == tc.rcv_nxt) {
		tc.rcv_nxt++;
		tc.fin = 1;
	}
	if (n || (flags & TCP_FIN))
		tcp_send(TCP_ACK, 0, 0, 0);
	return flags;
}

/* Waits for a segment with any of `want` flags, or (want == 0) for a complete HTTP response. */
static int tcp_wait(uint8_t want)
{
	/* A response may take a while: the service behind the address may be a process starting up. */
	for (unsigned i = 0; i < RESPONSE_POLLS; i++) {
		unsigned len;
		uint16_t id;
		const uint8_t *f = rx_peek(&len, &id);
		if (!f) {
			if (!want && tc.fin)
				return 1;
			kt_io_delay(1);
			continue;
		}
		int flags = tcp_in(f, len);
		if (flags < 0)
			background(f, len);
		rx_done(id);
		if (flags >= 0 && (flags & TCP_RST))
			return 0;
		if (flags >= 0 && want && (flags & want))
			return 1;
		if (!want) {
			/* Complete once the headers and Content-Length bytes of body are in. */
			const char *end = 0;
			for (unsigned k = 0; k + 3 < tc.len; k++)
				if (tc.data[k] == '\r' && tc.data[k + 1] == '\n' && tc.data[k + 2] == '\r' && tc.data[k + 3] == '\n') {
					end = tc.data + k + 4;
					break;
				}
			if (end) {
				unsigned cl = 0;
				for (const char *p = tc.data; p + 16 < end; p++)
					if (kt_strncmp(p, "Content-Length: ", 16) == 0) {
						for (p += 16; *p >= '0' && *p <= '9'; p++)
							cl = cl * 10 + (unsigned)(*p - '0');
						break;
					}
				if ((unsigned)(tc.data + tc.len - end) >= cl)
					return 1;
			}
		}
	}
	return 0;
}

static unsigned status_of(void)
{
	/* "HTTP/1.1 200 OK" */
	if (tc.len < 12)
		return 0;
	return (unsigned)(tc.data[9] - '0') * 100 + (unsigned)(tc.data[10] - '0') * 10 + (unsigned)(tc.data[11] - '0');
}

static const char *body_of(void)
{
	for (unsigned k = 0; k + 3 < tc.len; k++)
		if (tc.data[k] == '\r' && tc.data[k + 1] == '\n' && tc.data[k + 2] == '\r' && tc.data[k + 3] == '\n')
			return tc.data + k + 4;
	return "";
}

/* One request on a fresh connection to the MMDS; the response is in tc. */
static int mmds_request(const char *req, uint16_t nr, uint32_t iss)
{
	tc.port = (uint16_t)(LOCAL_PORT + nr);
	tc.snd_nxt = iss;
	tc.rcv_nxt = 0;
	tc.fin = 0;
	tc.len = 0;
	tc.data[0] = 0;
	if (!tcp_send(TCP_SYN, 0, 0, 1))
		return 0;
	tc.snd_nxt++;
	if (!tcp_wait(TCP_SYN))
		return 0;
	tcp_send(TCP_ACK, 0, 0, 0);
	unsigned n = (unsigned)kt_strlen(req);
	tcp_send(TCP_ACK | TCP_PSH, req, n, 0);
	tc.snd_nxt += n;
	if (!tcp_wait(0))
		return 0;
	/* With Connection: close the server's FIN follows its answer; ours closes the other half. */
	if (!tc.fin)
		tcp_wait(TCP_FIN);
	tcp_send(TCP_ACK | TCP_FIN, 0, 0, 0);
	tc.snd_nxt++;
	return 1;
}

static void printable(char *s)
{
	for (; *s; s++)
		if (*s < ' ' || *s > '~')
			*s = '?';
}

void kt_main(void)
{
	struct kt_virtio_mmio devs[KT_MAX_VIRTIO];
	unsigned n = kt_cmdline_virtio(devs, KT_MAX_VIRTIO);
	int found = -1;
	for (unsigned i = 0; i < n; i++)
		if (vdev_probe(devs[i].base) == VIRTIO_ID_NET) {
			found = (int)i;
			break;
		}
	if (found < 0) {
		kt_printf("KT: FAIL net no virtio-net device (%u virtio-mmio devices)\n", n);
		kt_done();
	}
	base = devs[found].base;
	ip_param("net.ip", 0xAC100002, &my_ip);
	ip_param("net.peer", 0xAC100001, &peer_ip);
	ip_param("net.mmds", 0xA9FEA9FE, &mmds_ip);
	char path[128] = "/latest/meta-data/instance-id";
	kt_cmdline_get("net.path", path, sizeof(path));

	uint64_t features;
	const char *why = net_init(&features);
	if (why) {
		kt_printf("KT: FAIL net0 init %s\n", why);
		kt_done();
	}
	if (features & FEATURE(VIRTIO_NET_F_MAC)) {
		for (int i = 0; i < 6; i++)
			my_mac[i] = cfg8(NET_CFG_MAC + i);
	} else {
		static const uint8_t fallback[6] = { 0x06, 0x00, 0x6b, 0x74, 0x00, 0x01 };
		memcpy(my_mac, fallback, 6);
	}
	unsigned st = cfg8(NET_CFG_STATUS) | cfg8(NET_CFG_STATUS + 1) << 8;
	unsigned mtu = features & FEATURE(VIRTIO_NET_F_MTU) ? (unsigned)(cfg8(NET_CFG_MTU) | cfg8(NET_CFG_MTU + 1) << 8) : 0;
	kt_printf("KT: net0 base=%lx irq=%u features=%lx qsize=%u,%u status=%u mtu=%u\n", base, devs[found].irq, features,
		  q[RXQ].size, q[TXQ].size, st, mtu);
	print_mac("KT: net0 mac=", my_mac);

	if (peer_ip) {
		uint8_t pmac[6];
		if (!arp_resolve(peer_ip, pmac)) {
			kt_printf("KT: FAIL net0 arp timeout\n");
		} else {
			print_mac("KT: net0 arp peer=", pmac);
			/* Three replies wanted, five tries: a peer may drop the first while it sets up. */
			int ok = 0;
			for (uint16_t s = 1; s <= 5 && ok < 3; s++) {
				int ttl = ping(pmac, s);
				if (ttl >= 0) {
					kt_printf("KT: net0 ping seq=%u ttl=%d\n", s, ttl);
					ok++;
				}
			}
			if (ok == 3)
				kt_printf("KT: PASS net0 ping\n");
			else
				kt_printf("KT: FAIL net0 ping %d/3 replies\n", ok);
		}
	}

	if (mmds_ip) {
		if (!arp_resolve(mmds_ip, tc.mac)) {
			kt_printf("KT: FAIL net0 mmds arp timeout\n");
		} else {
			print_mac("KT: net0 mmds arp=", tc.mac);
			static const char put[] = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
						  "X-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n";
			char token[96] = "";
			if (!mmds_request(put, 0, 0x1000)) {
				kt_printf("KT: FAIL net0 mmds token no response\n");
			} else {
				const char *b = body_of();
				unsigned tl = (unsigned)kt_strlen(b);
				kt_printf("KT: net0 mmds token_status=%u token_len=%u\n", status_of(), tl);
				if (tl < sizeof(token))
					memcpy(token, b, tl + 1);
			}
			static char get[512];
			kt_snprintf(get, sizeof(get),
				    "GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token: %s\r\nConnection: close\r\n\r\n",
				    path, token);
			if (!mmds_request(get, 1, 0x2000)) {
				kt_printf("KT: FAIL net0 mmds get no response\n");
			} else {
				char body[200];
				unsigned bl = (unsigned)kt_strlen(body_of());
				if (bl >= sizeof(body))
					bl = sizeof(body) - 1;
				memcpy(body, body_of(), bl);
				body[bl] = 0;
				printable(body);
				unsigned code = status_of();
				kt_printf("KT: net0 mmds get_status=%u body=%s\n", code, body);
				if (code == 200 && token[0])
					kt_printf("KT: PASS net0 mmds\n");
				else
					kt_printf("KT: FAIL net0 mmds status=%u\n", code);
			}
		}
	}
	char lingerv[16] = "";
	if (kt_cmdline_get("net.linger", lingerv, sizeof(lingerv)) > 0) {
		unsigned polls = 0;
		for (const char *c = lingerv; *c >= '0' && *c <= '9'; c++)
			polls = polls * 10 + (unsigned)(*c - '0');
		linger(polls);
	}
	kt_printf("KT: net0 rx_frames=%u tx_frames=%u arp_answered=%u echo_answered=%u\n", rx_frames, tx_frames, arp_answered, echo_answered);
	mmio_write32(base + VIRTIO_MMIO_STATUS, 0);
	kt_done();
}
