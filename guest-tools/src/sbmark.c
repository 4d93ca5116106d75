/* sbmark TEXT...: mark a moment for the recorder (see mark.h).
 * The words are joined with single spaces. Exit 0 on success, 1 when the
 * guest's debug console port could not be used, 2 on bad usage. */
#include <stdio.h>
#include <string.h>

#include "mark.h"
#include "sbtool.h"

int sbmark_main(int argc, char **argv)
{
    char text[SB_MARK_MAX + 1] = "";
    size_t used = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: sbmark TEXT...\n");
        return 2;
    }
    for (int i = 1; i < argc && used < SB_MARK_MAX; i++) {
        int n = snprintf(text + used, sizeof text - used, "%s%s", i > 1 ? " " : "", argv[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    return sb_mark(text) == 0 ? 0 : 1;
}
