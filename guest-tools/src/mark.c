/* See mark.h. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

#include "mark.h"

/* The guest's time stamp counter. Under QEMU's -icount it is the virtual
 * clock, from which the recorder computes the exact instruction count of
 * the mark (engine/recording/markers.py). */
static inline uint64_t read_tsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static int in_guest(void)
{
    const char *v = getenv("SBTUI_GUEST");
    return v != NULL && strcmp(v, "1") == 0;
}

int sb_mark(const char *text)
{
    static int port_state; /* 0 unknown, 1 usable, -1 unusable */
    char buf[SB_MARK_MAX + 1];
    size_t n = strlen(text);
    int rc = 0;

    if (n > SB_MARK_MAX)
        n = SB_MARK_MAX;
    memcpy(buf, text, n);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\n' || buf[i] == '\r')
            buf[i] = ' ';

    if (in_guest()) {
        if (port_state == 0)
            port_state = ioperm(SB_MARK_PORT, 1, 1) == 0 ? 1 : -1;
        if (port_state > 0) {
            /* "@" + 16 hex digits of the TSC + " " + text + "\n". The line is
             * built before the TSC is read except for the digits, so only a
             * few hundred instructions separate the mark's moment from its
             * last byte on the port. */
            static const char hex[] = "0123456789abcdef";
            char line[1 + 16 + 1 + SB_MARK_MAX + 1];
            size_t len = 0;
            uint64_t tsc;

            line[len++] = '@';
            len += 16;
            line[len++] = ' ';
            memcpy(line + len, buf, n);
            len += n;
            line[len++] = '\n';
            tsc = read_tsc();
            for (int i = 0; i < 16; i++)
                line[1 + i] = hex[(tsc >> (60 - 4 * i)) & 15];
            for (size_t i = 0; i < len; i++)
                outb((unsigned char)line[i], SB_MARK_PORT);
        } else {
            perror("sbmark: ioperm(0x402)");
            rc = -1;
        }
    }
    printf("sbtui-mark: %s\n", buf);
    fflush(stdout);
    return rc;
}

int sb_markf(const char *fmt, ...)
{
    char buf[SB_MARK_MAX + 1];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return sb_mark(buf);
}
