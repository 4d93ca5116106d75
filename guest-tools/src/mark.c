/* See mark.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

#include "mark.h"

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
            for (size_t i = 0; i < n; i++)
                outb((unsigned char)buf[i], SB_MARK_PORT);
            outb('\n', SB_MARK_PORT);
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
