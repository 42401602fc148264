/*
 * vsock.elf - polled virtio-vsock (virtio 1.2 §5.10) driver and a tiny invoke
 * agent, for the first virtio-mmio device with DeviceID 19.
 *
 * Phase 1 (unless vsock.host_port=0): connects to host CID 2 port
 * vsock.host_port (default 7000) from guest port 50000, sends
 * "hello from the guest\n", half-closes (SHUTDOWN with SEND only), reads
 * what the host answers until the host's own SEND shutdown, then closes
 * (SHUTDOWN with both flags) and waits for the host's RST.
 *
 * Phase 2: listens on vsock.port (default 1024) and answers the invoke
 * protocol (docs/invoke-protocol.md): every request frame is echoed with the
 * matching response kind; a payload of exactly `quit` (bytes) or `"quit"`
 * (JSON) is answered and ends the guest. Requests over 4096 bytes get an
 * ERROR frame and an RST. Up to 4 connections at once; others get RST.
 *
 * The guest consumes data as it arrives, advertises buf_alloc 65536 and
 * sends a CREDIT_UPDATE after every 32 KiB; it answers CREDIT_REQUEST. It
 * respects the host's credit when sending. See README.md for the lines.
 */
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19
#define RXQ 0
#define TXQ 1
#define EVQ 2
#define HOST_CID 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_RCV 1
#define SHUT_SEND 2
#define BUF_ALLOC 65536u
#define CREDIT_EVERY 32768u
#define RXPAY 4096
#define MAXPAY 4096
#define MAXCONN 4
#define LOCAL_PORT 50000

struct vhdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));

struct conn {
	int used;
	uint32_t port;      /* guest side */
	uint32_t peer;      /* host side */
	int established;
	int peer_shut;      /* SHUTDOWN flags received */
	int closing;        /* we sent SHUTDOWN(both), waiting for RST */
	uint32_t rx_cnt, fwd_adv, tx_cnt, peer_buf, peer_fwd;
	/* frame decoder (invoke) */
	uint8_t fh[12];
	unsigned fh_fill;
	uint32_t need, fill, id;
	uint8_t kind;
	int skipping;
	uint8_t payload[MAXPAY];
};

static struct vq_mem vqm[3];
static struct vqueue q[3];
static uint8_t rxbuf[VQ_MAX][sizeof(struct vhdr) + RXPAY] __attribute__((aligned(64)));
static uint8_t txbuf[sizeof(struct vhdr) + MAXPAY + 16] __attribute__((aligned(64)));
static uint32_t evbuf[VQ_MAX] __attribute__((aligned(16)));
static struct conn conns[MAXCONN + 1]; /* the last one is phase 1's */
static struct vdev d;
static uint64_t cid;
static unsigned long max_wait = 5000000;
static int failed;
static unsigned invokes;
static int quit;

/* phase 1 */
static char host_said[201];
static unsigned host_said_len;

static void send_pkt(struct conn *c, uint16_t op, uint32_t flags, const void *data, uint32_t len)
{
	struct vhdr *h = (struct vhdr *)txbuf;
	uint32_t id, ulen;
	h->src_cid = cid;
	h->dst_cid = HOST_CID;
	h->src_port = c->port;
	h->dst_port = c->peer;
	h->len = len;
	h->type = TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = BUF_ALLOC;
	h->fwd_cnt = c->rx_cnt;
	c->fwd_adv = c->rx_cnt;
	if (len)
		memcpy(txbuf + sizeof(*h), data, len);
	vq_set_desc(&q[TXQ], 0, txbuf, (uint32_t)sizeof(*h) + len, 0);
	vq_publish(&d, &q[TXQ], 0, 1);
	/* One packet in flight: the buffer is reused only once the device has used it. */
	for (unsigned long i = 0; !vq_take_used(&q[TXQ], &id, &ulen); i++) {
		if (i > max_wait || (vdev_status(&d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
			kt_printf("KT: FAIL vsock tx stuck\n");
			failed = 1;
			return;
		}
	}
	if (op == OP_RW)
		c->tx_cnt += len;
}

/* An RST for a packet that matched nothing (swapped addresses). */
static void send_rst_to(uint32_t our_port, uint32_t peer_port)
{
	struct conn tmp;
	memset(&tmp, 0, sizeof(tmp));
	tmp.port = our_port;
	tmp.peer = peer_port;
	send_pkt(&tmp, OP_RST, 0, 0, 0);
}

static struct conn *find(uint32_t port, uint32_t peer)
{
	for (unsigned i = 0; i <= MAXCONN; i++)
		if (conns[i].used && conns[i].port == port && conns[i].peer == peer)
			return &conns[i];
	return 0;
}

static void pump(void);

/* Sends `len` bytes as RW packets within the host's credit, waiting for credit when needed. */
static void send_data(struct conn *c, const uint8_t *p, uint32_t len)
{
	while (len > 0 && c->used && !failed) {
		uint32_t inflight = c->tx_cnt - c->peer_fwd;
		uint32_t credit = inflight >= c->peer_buf ? 0 : c->peer_buf - inflight;
		if (credit == 0) {
			send_pkt(c, OP_CREDIT_REQUEST, 0, 0, 0);
			for (unsigned long i = 0; c->used && c->tx_cnt - c->peer_fwd >= c->peer_buf; i++) {
				if (i > max_wait) {
					kt_printf("KT: FAIL vsock no credit\n");
					failed = 1;
					return;
				}
				pump();
			}
			continue;
		}
		uint32_t n = len < credit ? len : credit;
		if (n > MAXPAY)
			n = MAXPAY;
		send_pkt(c, OP_RW, 0, p, n);
		p += n;
		len -= n;
	}
}

static void answer(struct conn *c, uint8_t kind, const uint8_t *p, uint32_t len)
{
	uint8_t fh[12];
	fh[0] = 'K';
	fh[1] = 'I';
	fh[2] = 1;
	fh[3] = kind;
	memcpy(fh + 4, &c->id, 4);
	memcpy(fh + 8, &len, 4);
	send_data(c, fh, 12);
	send_data(c, p, len);
}

static void frame_done(struct conn *c)
{
	invokes++;
	if ((c->fill == 4 && memcmp(c->payload, "quit", 4) == 0) || (c->fill == 6 && memcmp(c->payload, "\"quit\"", 6) == 0))
		quit = 1;
	if (c->kind == 0x01 || c->kind == 0x02)
		answer(c, (uint8_t)(c->kind | 0x80), c->payload, c->fill);
	else
		answer(c, 0xFF, (const uint8_t *)"not a request", 13);
}

/* Feeds invoke bytes into the connection's frame decoder. */
static void feed(struct conn *c, const uint8_t *p, uint32_t len)
{
	while (len > 0 && c->used) {
		if (c->fh_fill < 12) {
			c->fh[c->fh_fill++] = *p++;
			len--;
			if (c->fh_fill < 12)
				continue;
			if (c->fh[0] != 'K' || c->fh[1] != 'I' || c->fh[2] != 1) {
				answer(c, 0xFF, (const uint8_t *)"bad frame", 9);
				send_pkt(c, OP_RST, 0, 0, 0);
				c->used = 0;
				return;
			}
			c->kind = c->fh[3];
			memcpy(&c->id, c->fh + 4, 4);
			memcpy(&c->need, c->fh + 8, 4);
			c->fill = 0;
			if (c->need > MAXPAY) {
				answer(c, 0xFF, (const uint8_t *)"request too large", 17);
				send_pkt(c, OP_RST, 0, 0, 0);
				c->used = 0;
				return;
			}
		} else {
			uint32_t n = c->need - c->fill;
			if (n > len)
				n = len;
			memcpy(c->payload + c->fill, p, n);
			c->fill += n;
			p += n;
			len -= n;
		}
		if (c->fh_fill == 12 && c->fill == c->need) {
			frame_done(c);
			c->fh_fill = 0;
		}
	}
}

static void drop_all(void)
{
	for (unsigned i = 0; i <= MAXCONN; i++)
		conns[i].used = 0;
}

static void on_packet(const struct vhdr *h, const uint8_t *payload, uint32_t plen, uint32_t listen_port)
{
	if (h->dst_cid != cid || h->src_cid != HOST_CID)
		return;
	struct conn *c = find(h->dst_port, h->src_port);
	if (c == 0) {
		if (h->op == OP_REQUEST && h->dst_port == listen_port && listen_port != 0) {
			for (unsigned i = 0; i < MAXCONN; i++) {
				if (conns[i].used)
					continue;
				c = &conns[i];
				memset(c, 0, sizeof(*c));
				c->used = 1;
				c->port = h->dst_port;
				c->peer = h->src_port;
				c->established = 1;
				c->peer_buf = h->buf_alloc;
				c->peer_fwd = h->fwd_cnt;
				send_pkt(c, OP_RESPONSE, 0, 0, 0);
				return;
			}
		}
		if (h->op != OP_RST)
			send_rst_to(h->dst_port, h->src_port);
		return;
	}
	c->peer_buf = h->buf_alloc;
	c->peer_fwd = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		c->established = 1;
		break;
	case OP_RST:
		c->used = 0;
		break;
	case OP_SHUTDOWN:
		c->peer_shut |= (int)(h->flags & 3);
		if ((h->flags & SHUT_SEND) && c != &conns[MAXCONN] && !c->closing) {
			/* An agent at end of stream closes both halves and waits for the RST. */
			c->closing = 1;
			send_pkt(c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND, 0, 0);
		}
		break;
	case OP_RW:
		c->rx_cnt += plen;
		if (c == &conns[MAXCONN]) {
			for (uint32_t i = 0; i < plen && host_said_len < 200; i++)
				host_said[host_said_len++] = (payload[i] >= ' ' && payload[i] < 0x7F) ? (char)payload[i] : '?';
		} else {
			feed(c, payload, plen);
		}
		if (c->used && c->rx_cnt - c->fwd_adv >= CREDIT_EVERY)
			send_pkt(c, OP_CREDIT_UPDATE, 0, 0, 0);
		break;
	case OP_CREDIT_REQUEST:
		send_pkt(c, OP_CREDIT_UPDATE, 0, 0, 0);
		break;
	default:
		break;
	}
}

static uint32_t listen_port;

/* Handles every received packet and event; returns how many. */
static unsigned pump_once(void)
{
	uint32_t id, len;
	unsigned n = 0;
	while (vq_take_used(&q[EVQ], &id, &len)) {
		kt_printf("KT: vsock event=%u\n", len >= 4 ? evbuf[id % VQ_MAX] : 0xffffffffu);
		drop_all();
		vq_set_desc(&q[EVQ], (uint16_t)id, &evbuf[id % VQ_MAX], 4, 1);
		vq_publish(&d, &q[EVQ], (uint16_t)id, 1);
		n++;
	}
	while (vq_take_used(&q[RXQ], &id, &len)) {
		n++;
		if (id < q[RXQ].qsize && len >= sizeof(struct vhdr)) {
			struct vhdr h;
			memcpy(&h, rxbuf[id], sizeof(h));
			uint32_t plen = h.len;
			if (plen > len - sizeof(h))
				plen = len - (uint32_t)sizeof(h);
			on_packet(&h, rxbuf[id] + sizeof(h), plen, listen_port);
		}
		if (id < q[RXQ].qsize)
			vq_publish(&d, &q[RXQ], (uint16_t)id, 1);
	}
	if (n)
		vdev_ack_interrupts(&d);
	return n;
}

static void pump(void)
{
	if (!pump_once() && (vdev_status(&d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
		kt_printf("KT: FAIL vsock needs_reset\n");
		failed = 1;
	}
}

static unsigned long arg_num(const char *key, unsigned long def)
{
	char buf[24];
	if (!kt_cmdline_get(key, buf, sizeof(buf)))
		return def;
	unsigned long v = 0;
	for (char *c = buf; *c >= '0' && *c <= '9'; c++)
		v = v * 10 + (unsigned long)(*c - '0');
	return v;
}

static void phase1(uint32_t host_port)
{
	struct conn *c = &conns[MAXCONN];
	memset(c, 0, sizeof(*c));
	c->used = 1;
	c->port = LOCAL_PORT;
	c->peer = host_port;
	send_pkt(c, OP_REQUEST, 0, 0, 0);
	unsigned long i;
	for (i = 0; c->used && !c->established && !failed && i < max_wait; i++)
		pump();
	if (!c->used || !c->established) {
		kt_printf("KT: vsock connect=%s\n", c->used ? "timeout" : "refused");
		c->used = 0;
		return;
	}
	kt_printf("KT: vsock connect=ok\n");
	static const char hello[] = "hello from the guest\n";
	send_data(c, (const uint8_t *)hello, sizeof(hello) - 1);
	send_pkt(c, OP_SHUTDOWN, SHUT_SEND, 0, 0);
	for (i = 0; c->used && !(c->peer_shut & SHUT_SEND) && !failed && i < max_wait; i++)
		pump();
	host_said[host_said_len] = 0;
	kt_printf("KT: vsock host_said=%s\n", host_said);
	if (c->used) {
		send_pkt(c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND, 0, 0);
		for (i = 0; c->used && !failed && i < max_wait; i++)
			pump();
	}
	kt_printf("KT: vsock close=%s\n", c->used ? "timeout" : "rst");
	c->used = 0;
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	unsigned i;

	kt_idt_init();
	max_wait = arg_num("vsock.wait", max_wait);
	uint32_t host_port = (uint32_t)arg_num("vsock.host_port", 7000);
	listen_port = (uint32_t)arg_num("vsock.port", 1024);
	for (i = 0; i < ndev; i++)
		if (vdev_probe(dev[i].base) == VIRTIO_ID_VSOCK)
			break;
	if (i == ndev) {
		kt_printf("KT: FAIL vsock no device\n");
		kt_done();
	}
	const char *err = vdev_init_queues(&d, dev[i].base, dev[i].irq, FEATURE(0), q, vqm, 3);
	if (err) {
		kt_printf("KT: FAIL vsock init %s\n", err);
		kt_done();
	}
	uint32_t lo = vdev_read(&d, VIRTIO_MMIO_CONFIG);
	uint32_t hi = vdev_read(&d, VIRTIO_MMIO_CONFIG + 4);
	cid = lo | (uint64_t)hi << 32;
	kt_printf("KT: vsock cid=%lu features=%lx qsize=%u\n", cid, d.features, q[RXQ].qsize);
	for (uint16_t s = 0; s < q[RXQ].qsize; s++) {
		vq_set_desc(&q[RXQ], s, rxbuf[s], sizeof(rxbuf[s]), 1);
		vq_publish(&d, &q[RXQ], s, 0);
	}
	vdev_write(&d, VIRTIO_MMIO_QUEUE_NOTIFY, RXQ);
	for (uint16_t s = 0; s < 2; s++) {
		vq_set_desc(&q[EVQ], s, &evbuf[s], 4, 1);
		vq_publish(&d, &q[EVQ], s, 0);
	}
	vdev_write(&d, VIRTIO_MMIO_QUEUE_NOTIFY, EVQ);

	if (host_port != 0)
		phase1(host_port);

	kt_printf("KT: vsock listening=%u\n", listen_port);
	unsigned long idle = 0;
	while (!quit && !failed) {
		if (pump_once()) {
			idle = 0;
			continue;
		}
		if (vdev_status(&d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET) {
			kt_printf("KT: FAIL vsock needs_reset\n");
			failed = 1;
			break;
		}
		if (++idle > max_wait) {
			kt_printf("KT: FAIL vsock timeout\n");
			failed = 1;
			break;
		}
	}
	kt_printf("KT: vsock invokes=%u\n", invokes);
	kt_done();
}
