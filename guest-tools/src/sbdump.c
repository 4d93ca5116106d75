/* sbdump: copy stdin to QEMU's debug console port 0x402, byte for byte.
 *
 * How the guest hands a file to the host without a disk or network: the
 * builder boots the guest once with the port on a chardev file and runs
 * `sbdump < /proc/kallsyms` to obtain the kernel's symbol table. Like sbmark
 * it refuses to touch the port outside the guest (SBTUI_GUEST=1 unset).
 * Exit 0 when all of stdin was written, 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <unistd.h>

#include "mark.h"
#include "sbtool.h"

int sbdump_main(int argc, char **argv)
{
    static unsigned char buf[65536];
    const char *guest = getenv("SBTUI_GUEST");
    unsigned long long total = 0;
    ssize_t n;

    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: sbdump < FILE\n");
        return 2;
    }
    if (guest == NULL || strcmp(guest, "1") != 0) {
        fprintf(stderr, "sbdump: not inside the sbtui guest (SBTUI_GUEST=1 unset): refusing "
                        "to write I/O port 0x%x\n", SB_MARK_PORT);
        return 1;
    }
    if (ioperm(SB_MARK_PORT, 1, 1) != 0) {
        perror("sbdump: ioperm(0x402)");
        return 1;
    }
    while ((n = read(0, buf, sizeof buf)) > 0) {
        outsb(SB_MARK_PORT, buf, (unsigned long)n);
        total += (unsigned long long)n;
    }
    if (n < 0) {
        perror("sbdump: read");
        return 1;
    }
    fprintf(stderr, "sbdump: %llu bytes\n", total);
    return 0;
}
