/* sbtool: multi-call binary. Runs the applet named by argv[0]'s basename
 * (the initramfs has symlinks sbmark, memchurn, sbgen, sbdump -> sbtool), or by
 * argv[1] when called as "sbtool APPLET ARGS...". */
#include <stdio.h>
#include <string.h>

#include "sbtool.h"

static const struct {
    const char *name;
    int (*main)(int, char **);
} applets[] = {
    {"sbmark", sbmark_main},
    {"memchurn", memchurn_main},
    {"sbgen", sbgen_main},
    {"sbdump", sbdump_main},
};

int main(int argc, char **argv)
{
    const char *name = argc > 0 ? argv[0] : "sbtool";
    const char *slash = strrchr(name, '/');

    if (slash)
        name = slash + 1;
    if (strcmp(name, "sbtool") == 0) {
        if (argc < 2) {
            fprintf(stderr, "usage: sbtool APPLET [ARGS...]; applets: sbmark memchurn sbgen sbdump\n");
            return 2;
        }
        argv++;
        argc--;
        name = argv[0];
    }
    for (size_t i = 0; i < sizeof applets / sizeof applets[0]; i++)
        if (strcmp(name, applets[i].name) == 0)
            return applets[i].main(argc, argv);
    fprintf(stderr, "sbtool: unknown applet '%s'; applets: sbmark memchurn sbgen sbdump\n", name);
    return 2;
}
