/* sbgen SEED BYTES: write BYTES bytes of deterministic pseudo-text to stdout.
 *
 * The input for the compress workload (the way SPEC's 401.bzip2 compresses
 * generated data): words from a fixed vocabulary, numbers and punctuation,
 * chosen by xorshift64 seeded from SEED, so it compresses like prose rather
 * than like noise. The same SEED and BYTES always give the same bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbtool.h"

static const char *const words[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was",
    "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at",
    "which", "but", "have", "an", "had", "they", "you", "were", "their", "one", "all",
    "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
    "who", "so", "no", "machine", "memory", "page", "replay", "checkpoint", "interval",
    "guest", "kernel", "snapshot", "record", "debugger", "register", "instruction",
    "deterministic", "virtual",
};

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int parse_u64(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || text[0] == '\0' || text[0] == '-')
        return -1;
    *out = v;
    return 0;
}

int sbgen_main(int argc, char **argv)
{
    uint64_t seed, want;

    if (argc != 3 || parse_u64(argv[1], &seed) || parse_u64(argv[2], &want)) {
        fprintf(stderr, "usage: sbgen SEED BYTES (whole numbers)\n");
        return 2;
    }
    uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull;
    if (s == 0)
        s = 1;

    static char buf[65536];
    size_t used = 0;
    uint64_t written = 0, col = 0;
    const size_t nwords = sizeof words / sizeof words[0];

    while (written < want) {
        char tok[32];
        uint64_t r = xorshift64(&s);
        int n;

        if ((r & 31) == 0)
            n = snprintf(tok, sizeof tok, "%llu", (unsigned long long)((r >> 8) % 100000));
        else
            n = snprintf(tok, sizeof tok, "%s", words[(r >> 8) % nwords]);
        col += (uint64_t)n + 1;
        if (col > 72) {
            tok[n++] = '\n';
            col = 0;
        } else if (((r >> 40) & 15) == 0) {
            tok[n++] = ',';
            tok[n++] = ' ';
        } else {
            tok[n++] = ' ';
        }
        for (int i = 0; i < n && written < want; i++, written++) {
            buf[used++] = tok[i];
            if (used == sizeof buf) {
                if (fwrite(buf, 1, used, stdout) != used)
                    goto fail;
                used = 0;
            }
        }
    }
    if (used && fwrite(buf, 1, used, stdout) != used)
        goto fail;
    if (fflush(stdout) == 0)
        return 0;
fail:
    perror("sbgen: write");
    return 1;
}
