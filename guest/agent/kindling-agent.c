/*
 * kindling-agent: the guest side of vm.invoke() for Linux guests.
 *
 * Listens on a vsock port (default 1024) and answers the invoke protocol
 * (docs/invoke-protocol.md): each connection carries any number of
 * request/response pairs, one at a time. Without a handler, every request is
 * echoed with the matching response kind. With a handler command, each request
 * runs it once: the payload on its stdin, KINDLING_INVOKE_KIND (json|bytes)
 * and KINDLING_INVOKE_ID in its environment; exit status 0 answers with its
 * stdout (same kind as the request), anything else with an ERROR frame
 * ("exit status N: <stderr>" or "killed by signal N").
 *
 *   kindling-agent [-p PORT] [-m MAX_BYTES] [--stdio] [-- COMMAND ARGS...]
 *
 * --stdio serves one connection on stdin/stdout instead of vsock (for tests on
 * the host and for running under socat or inetd-style launchers).
 *
 * Built static (guest/agent/Makefile) so it runs in any Linux guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define HDR 12
#define MAGIC0 0x4B
#define MAGIC1 0x49
#define VERSION 1
#define KIND_REQ_JSON 0x01
#define KIND_REQ_BYTES 0x02
#define KIND_ERROR 0xFF
#define DEFAULT_PORT 1024
#define DEFAULT_MAX (16u * 1024 * 1024)
#define STDERR_KEEP 4096

static uint32_t max_bytes = DEFAULT_MAX;
static char **handler; /* NULL: echo */

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads exactly n bytes. Returns n, 0 at end of stream before any byte, -1 on error or a cut-off. */
static ssize_t read_full(int fd, void *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return got == 0 ? 0 : -1;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* Reads and discards n bytes. Returns 0, or -1 at end of stream or on error. */
static int skip(int fd, uint64_t n)
{
	static uint8_t sink[65536];
	while (n > 0) {
		size_t want = n < sizeof(sink) ? (size_t)n : sizeof(sink);
		ssize_t r = read(fd, sink, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		n -= (uint64_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t w = write(fd, (const char *)buf + done, n - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		done += (size_t)w;
	}
	return 0;
}

static int send_frame(int fd, uint8_t kind, uint32_t id, const void *payload, uint32_t len)
{
	uint8_t h[HDR] = { MAGIC0, MAGIC1, VERSION, kind };
	put_u32(h + 4, id);
	put_u32(h + 8, len);
	if (write_full(fd, h, HDR) < 0)
		return -1;
	return len ? write_full(fd, payload, len) : 0;
}

static int send_error(int fd, uint32_t id, const char *msg)
{
	return send_frame(fd, KIND_ERROR, id, msg, (uint32_t)strlen(msg));
}

struct buf {
	uint8_t *p;
	size_t len, cap, limit;
	int overflow;
};

static void buf_add(struct buf *b, const uint8_t *p, size_t n)
{
	if (b->len + n > b->limit) {
		n = b->limit - b->len;
		b->overflow = 1;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *np = realloc(b->p, cap);
		if (np == NULL) {
			b->overflow = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/*
 * Runs the handler with `in` on stdin; collects stdout (up to max_bytes) and
 * the start of stderr. Returns the wait status, or -1 if it could not run.
 */
static int run_handler(uint8_t kind, uint32_t id, const uint8_t *in, uint32_t in_len, struct buf *out, struct buf *err)
{
	int pin[2], pout[2], perr[2];
	if (pipe2(pin, O_CLOEXEC) < 0 || pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		char idbuf[16];
		snprintf(idbuf, sizeof(idbuf), "%u", id);
		setenv("KINDLING_INVOKE_KIND", kind == KIND_REQ_JSON ? "json" : "bytes", 1);
		setenv("KINDLING_INVOKE_ID", idbuf, 1);
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		execvp(handler[0], handler);
		dprintf(2, "cannot run %s: %s", handler[0], strerror(errno));
		_exit(127);
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	/* Feed stdin and drain stdout/stderr together, so a handler that writes before reading all never deadlocks. */
	size_t fed = 0;
	int in_open = 1, out_open = 1, err_open = 1;
	if (in_len == 0) {
		close(pin[1]);
		in_open = 0;
	}
	uint8_t chunk[65536];
	while (out_open || err_open) {
		struct pollfd fds[3];
		int n = 0, iin = -1, iout = -1, ierr = -1;
		if (in_open) {
			fds[n] = (struct pollfd){ pin[1], POLLOUT, 0 };
			iin = n++;
		}
		if (out_open) {
			fds[n] = (struct pollfd){ pout[0], POLLIN, 0 };
			iout = n++;
		}
		if (err_open) {
			fds[n] = (struct pollfd){ perr[0], POLLIN, 0 };
			ierr = n++;
		}
		if (poll(fds, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (iin >= 0 && fds[iin].revents) {
			ssize_t w = (fds[iin].revents & POLLOUT) ? write(pin[1], in + fed, in_len - fed) : -1;
			if (w > 0)
				fed += (size_t)w;
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0 || fed == in_len) {
				close(pin[1]);
				in_open = 0;
			}
		}
		if (iout >= 0 && fds[iout].revents) {
			ssize_t r = read(pout[0], chunk, sizeof(chunk));
			if (r > 0)
				buf_add(out, chunk, (size_t)r);
			else if (!(r < 0 && errno == EINTR)) {
				close(pout[0]);
				out_open = 0;
			}
		}
		if (ierr >= 0 && fds[ierr].revents) {
			ssize_t r = read(perr[0], chunk, sizeof(chunk));
			if (r > 0)
				buf_add(err, chunk, (size_t)r);
			else if (!(r < 0 && errno == EINTR)) {
				close(perr[0]);
				err_open = 0;
			}
		}
	}
	if (in_open)
		close(pin[1]);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return status;
}

/* Serves one connection until the host closes it or breaks the protocol. */
static void serve(int in_fd, int out_fd)
{
	uint8_t h[HDR];
	for (;;) {
		ssize_t r = read_full(in_fd, h, HDR);
		if (r <= 0)
			return; /* end of stream between frames: done */
		uint32_t id = get_u32(h + 4);
		uint32_t len = get_u32(h + 8);
		if (h[0] != MAGIC0 || h[1] != MAGIC1 || h[2] != VERSION || (h[3] != KIND_REQ_JSON && h[3] != KIND_REQ_BYTES)) {
			send_error(out_fd, id, "bad frame header");
			return;
		}
		if (len > max_bytes) {
			/*
			 * Answer at once, then read the payload away: the stream stays in step, and the
			 * host, still writing it, never sees its connection cut under a pending write.
			 */
			if (send_error(out_fd, id, "request too large") < 0 || skip(in_fd, len) < 0)
				return;
			continue;
		}
		uint8_t *payload = malloc(len ? len : 1);
		if (payload == NULL) {
			send_error(out_fd, id, "out of memory");
			return;
		}
		if (len && read_full(in_fd, payload, len) != (ssize_t)len) {
			free(payload);
			return;
		}
		uint8_t kind = h[3];
		int ok;
		if (handler == NULL) {
			ok = send_frame(out_fd, (uint8_t)(kind | 0x80), id, payload, len) == 0;
		} else {
			struct buf out = { 0, 0, 0, max_bytes, 0 }, err = { 0, 0, 0, STDERR_KEEP, 0 };
			int st = run_handler(kind, id, payload, len, &out, &err);
			char msg[STDERR_KEEP + 128];
			if (st < 0) {
				snprintf(msg, sizeof(msg), "cannot run the handler: %s", strerror(errno));
				ok = send_error(out_fd, id, msg) == 0;
			} else if (WIFSIGNALED(st)) {
				snprintf(msg, sizeof(msg), "killed by signal %d: %.*s", WTERMSIG(st), (int)err.len, err.p ? (char *)err.p : "");
				ok = send_error(out_fd, id, msg) == 0;
			} else if (WEXITSTATUS(st) != 0) {
				snprintf(msg, sizeof(msg), "exit status %d: %.*s", WEXITSTATUS(st), (int)err.len, err.p ? (char *)err.p : "");
				ok = send_error(out_fd, id, msg) == 0;
			} else if (out.overflow) {
				ok = send_error(out_fd, id, "response too large") == 0;
			} else {
				ok = send_frame(out_fd, (uint8_t)(kind | 0x80), id, out.p, (uint32_t)out.len) == 0;
			}
			free(out.p);
			free(err.p);
		}
		free(payload);
		if (!ok)
			return;
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: kindling-agent [-p PORT] [-m MAX_BYTES] [--stdio] [-- COMMAND ARGS...]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned long port = DEFAULT_PORT;
	int stdio_mode = 0;
	int i;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			if (i + 1 < argc)
				handler = &argv[i + 1];
			break;
		} else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc) {
			port = strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
			max_bytes = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--stdio") == 0) {
			stdio_mode = 1;
		} else {
			usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (stdio_mode) {
		serve(0, 1);
		return 0;
	}
	/* Connection children are reaped by the kernel. */
	signal(SIGCHLD, SIG_IGN);
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		perror("kindling-agent: socket(AF_VSOCK)");
		return 1;
	}
	struct sockaddr_vm addr;
	memset(&addr, 0, sizeof(addr));
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = (unsigned)port;
	if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(s, 16) < 0) {
		perror("kindling-agent: bind/listen");
		return 1;
	}
	for (;;) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("kindling-agent: accept");
			return 1;
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(s);
			serve(c, c);
			_exit(0);
		}
		close(c);
	}
}
