/*
 * spew.elf - steady console output, for the console batching tests and the console bench.
 *
 * Prints "spew=<lines>" lines (default 100) of the form
 *   "KT: line <n> <sum> abcdefghijklmnopqrstuvwxyz0123456789\n"
 * where <n> counts from 0 and <sum> is (n * 2654435761) mod 2^32 in hex, so that a missing,
 * repeated or reordered byte changes the text a host test recomputes. Then, unless "partial=1":
 * "KT: DONE" and a reset. With "partial=1" the last thing printed is "KT: partial" without a
 * newline, directly followed by the reset: the bytes before a reset must all reach the host.
 */
#include "kt.h"

static unsigned parse_uint(const char *s, unsigned dflt)
{
	if (!*s)
		return dflt;
	unsigned v = 0;
	for (; *s >= '0' && *s <= '9'; s++)
		v = v * 10 + (unsigned)(*s - '0');
	return v;
}

void kt_main(void)
{
	char buf[16] = "";
	kt_cmdline_get("spew", buf, sizeof(buf));
	unsigned lines = parse_uint(buf, 100);
	char partial[4] = "";
	kt_cmdline_get("partial", partial, sizeof(partial));

	for (unsigned n = 0; n < lines; n++)
		kt_printf("KT: line %u %x abcdefghijklmnopqrstuvwxyz0123456789\n", n,
			  (uint32_t)(n * 2654435761u));
	if (partial[0] == '1') {
		uart_puts("KT: partial");
		kt_reset();
	}
	kt_done();
}
