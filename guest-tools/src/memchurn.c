/* memchurn [-m MiB] [-r ROUNDS] [-s SECONDS]: deterministic memory churn.
 *
 * Works on an anonymous region of MiB mebibytes (default 64) in rounds
 * (default 3; with -s, rounds repeat until SECONDS have passed, at least one,
 * capped by -r if both are given). Each round runs five phases over the
 * region's four quarters:
 *   fill    every page gets its own pseudo-random contents (unique pages)
 *   dup     the second quarter becomes copies of one page (duplicate pages)
 *   zero    the third quarter is zero-filled (zero pages)
 *   stride  every 8th page of the first quarter gets 64 new bytes (sparse dirtying)
 *   scan    the whole region is read and checksummed
 * Before each phase it marks "memchurn round=R phase=NAME" (sbmark), after it
 * prints "memchurn: round R phase NAME pages=N ..." and, at the end,
 * "memchurn: done rounds=R sum=HEX". Contents depend only on the arguments
 * (xorshift64 seeded from round and page number), so two runs with the same
 * arguments print the same checksums; no clock value is ever printed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mark.h"
#include "sbtool.h"

#define PAGE 4096u
#define WORDS (PAGE / 8u)

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t seed_for(uint64_t round, uint64_t page)
{
    /* splitmix64 of (round, page): never 0, which xorshift must not start from */
    uint64_t z = (round << 40) ^ page ^ 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long parse_positive(const char *opt, const char *text, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(text, &end, 10);
    if (errno || *end || v < 1 || v > max) {
        fprintf(stderr, "memchurn: %s expects a whole number from 1 to %ld, got '%s'\n",
                opt, max, text);
        exit(2);
    }
    return v;
}

int memchurn_main(int argc, char **argv)
{
    long mib = 64, rounds = -1, seconds = -1;
    int opt;

    while ((opt = getopt(argc, argv, "m:r:s:")) != -1) {
        switch (opt) {
        case 'm': mib = parse_positive("-m", optarg, 65536); break;
        case 'r': rounds = parse_positive("-r", optarg, 1000000); break;
        case 's': seconds = parse_positive("-s", optarg, 100000000); break;
        default:
            fprintf(stderr, "usage: memchurn [-m MiB] [-r ROUNDS] [-s SECONDS]\n");
            return 2;
        }
    }
    if (rounds < 0 && seconds < 0)
        rounds = 3;

    size_t pages = (size_t)mib * (1024u * 1024u / PAGE);
    size_t q = pages / 4;
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "memchurn: cannot map %ld MiB: %s\n", mib, strerror(errno));
        return 1;
    }

    printf("memchurn: start mem=%ldMiB pages=%zu\n", mib, pages);
    fflush(stdout);

    double start = now();
    uint64_t total = 0;
    long done = 0;
    while (rounds < 0 || done < rounds) {
        long r = done;
        uint64_t *page;

        sb_markf("memchurn round=%ld phase=fill", r);
        for (size_t p = 0; p < pages; p++) {
            uint64_t s = seed_for((uint64_t)r, p);
            page = mem + p * WORDS;
            for (unsigned w = 0; w < WORDS; w++)
                page[w] = xorshift64(&s);
        }
        printf("memchurn: round %ld phase fill pages=%zu\n", r, pages);
        fflush(stdout);

        sb_markf("memchurn round=%ld phase=dup", r);
        uint64_t s = seed_for((uint64_t)r, ~(uint64_t)0);
        uint64_t *tmpl = mem + q * WORDS;
        for (unsigned w = 0; w < WORDS; w++)
            tmpl[w] = xorshift64(&s);
        for (size_t p = q + 1; p < 2 * q; p++)
            memcpy(mem + p * WORDS, tmpl, PAGE);
        printf("memchurn: round %ld phase dup pages=%zu\n", r, q);
        fflush(stdout);

        sb_markf("memchurn round=%ld phase=zero", r);
        memset(mem + 2 * q * WORDS, 0, q * PAGE);
        printf("memchurn: round %ld phase zero pages=%zu\n", r, q);
        fflush(stdout);

        sb_markf("memchurn round=%ld phase=stride", r);
        size_t touched = 0;
        for (size_t p = 0; p < q; p += 8, touched++) {
            page = mem + p * WORDS;
            for (unsigned w = 0; w < 8; w++)
                page[w] = ((uint64_t)r << 48) ^ ((uint64_t)p << 8) ^ w;
        }
        printf("memchurn: round %ld phase stride pages=%zu\n", r, touched);
        fflush(stdout);

        sb_markf("memchurn round=%ld phase=scan", r);
        uint64_t sum = 0xCBF29CE484222325ull;
        for (size_t i = 0; i < pages * WORDS; i++)
            sum = (sum ^ mem[i]) * 0x100000001B3ull;
        total ^= sum;
        printf("memchurn: round %ld phase scan pages=%zu sum=%016llx\n", r, pages,
               (unsigned long long)sum);
        fflush(stdout);

        done++;
        if (seconds > 0 && now() - start >= (double)seconds)
            break;
    }
    printf("memchurn: done rounds=%ld sum=%016llx\n", done, (unsigned long long)total);
    fflush(stdout);
    munmap(mem, pages * PAGE);
    return 0;
}
