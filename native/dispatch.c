/* Dispatch: which kernel runs, and the search loop around it.
 *
 * Kernels (one file each), fastest first, as measured on the target VM (Xeon
 * Sapphire Rapids 2.9 GHz, KVM, 2 shared cores; best of 7 runs of 2**23
 * nonces at difficulty 16, through Python; hashlib's single-stream SHA-256
 * did ~22.5 M compressions/s in the same runs):
 *   avx512x16  ~63 M/s (2.8x hashlib)  kernel_avx512.c    AVX-512F/VL
 *   sha-ni     ~29 M/s (1.27x)         kernel_shani.c     SHA-NI + SSE4.1
 *   portable   ~10 M/s (0.45x)         kernel_portable.c  plain C
 * On an AMD EPYC Zen 4 (KVM, 2 shared cores; 9 runs, each the best of 7-9
 * searches of 2e7 nonces, 5e6 for portable) avx512x16 led every run at
 * 66-69 M/s; sha-ni gave 39-61 M/s (the SHA-NI figures varied most) and
 * portable 12-16 M/s. VC_KERNEL_AUTO therefore takes avx512x16 on any CPU
 * with AVX-512F/VL, else sha-ni, else portable. (On a CPU with a faster SHA
 * unit than these, SHA-NI might win; revisit the rule there.)
 *
 * Why run-time choice: the x86 kernels are compiled with function-level
 * target attributes (no -march flag), so one build, e.g. one wheel, loads on
 * any x86-64, and cpuid (via __builtin_cpu_supports) decides here which of
 * them this CPU may run. A kernel is only ever called through scan_fn after
 * that check; asking for one the CPU lacks is VC_BAD_ARGUMENT, never SIGILL.
 */
#include "kernel.h"

#include <stddef.h>

#if VC_HAVE_X86
static int cpu_has_avx512vl(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    }
    return cached;
}
#endif

int vc_sha_ni_available(void)
{
#if VC_HAVE_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
                 __builtin_cpu_supports("ssse3");
    }
    return cached;
#else
    return 0;
#endif
}

/* The kernel VC_KERNEL_AUTO resolves to on this CPU (see the top comment). */
static int auto_kernel(void)
{
#if VC_HAVE_X86
    if (cpu_has_avx512vl())
        return VC_KERNEL_AVX512;
    if (vc_sha_ni_available())
        return VC_KERNEL_SHANI_SSE;
#endif
    return VC_KERNEL_PORTABLE;
}

const char *vc_kernel_name(int kernel)
{
    if (kernel == VC_KERNEL_AUTO)
        kernel = auto_kernel();
    switch (kernel) {
    case VC_KERNEL_PORTABLE:
        return "portable";
    case VC_KERNEL_SHANI_SSE:
        return "sha-ni";
    case VC_KERNEL_AVX512:
        return "avx512x16";
    default:
        return "unknown";
    }
}

/* Fill g for the segment whose nonces have high word w8 (kernel.h says what
 * each field is for). */
static void segment_init(struct segment *g, const uint32_t content_words[8], uint32_t w8)
{
    uint32_t *w = g->w;
    for (int i = 0; i < 8; i++)
        w[i] = content_words[i];
    w[8] = w8;
    w[9] = 0;
    w[10] = 0x80000000u;
    w[11] = w[12] = w[13] = w[14] = 0;
    w[15] = 320; /* message length in bits: 40 bytes */

    /* Rounds 0..8 are shared by every nonce of the segment, and round 9 with
     * W9 = 0 gives the base to which each nonce adds its W9 (kernel.h). This
     * is ~10 rounds per 2**32 nonces (or per call), so no need to cache the
     * state after round 7 separately. */
    uint32_t a = IV[0], b = IV[1], c = IV[2], d = IV[3];
    uint32_t e = IV[4], f = IV[5], gg = IV[6], h = IV[7];
    for (int i = 0; i < 10; i++) {
        uint32_t t1 = h + BSIG1(e) + CH(e, f, gg) + K[i] + w[i];
        uint32_t t2 = BSIG0(a) + MAJ(a, b, c);
        h = gg;
        gg = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    g->s9[0] = a; g->s9[1] = b; g->s9[2] = c; g->s9[3] = d;
    g->s9[4] = e; g->s9[5] = f; g->s9[6] = gg; g->s9[7] = h;

    g->c16 = SSIG1(w[14]) + SSIG0(w[1]) + w[0];
    g->w17 = SSIG1(w[15]) + w[10] + SSIG0(w[2]) + w[1];
    g->c18 = w[11] + SSIG0(w[3]) + w[2];
    g->w19 = SSIG1(g->w17) + w[12] + SSIG0(w[4]) + w[3];
    g->c20 = w[13] + SSIG0(w[5]) + w[4];
    g->w21 = SSIG1(g->w19) + w[14] + SSIG0(w[6]) + w[5];
    g->c22 = w[15] + SSIG0(w[7]) + w[6];
    g->c23 = SSIG1(g->w21) + SSIG0(w[8]) + w[7];

    g->abef9[0] = f; g->abef9[1] = e; g->abef9[2] = b; g->abef9[3] = a;
    g->cdgh9[0] = h; g->cdgh9[1] = gg; g->cdgh9[2] = d; g->cdgh9[3] = c;
    for (int i = 0; i < 4; i++) {
        g->m2[i] = w[8 + i];
        g->m3[i] = w[12 + i];
        /* sha256msg1(X, Y) lane i = X[i] + s0(next word), the next word of
         * lane 3 being Y[0]; alignr(W12..15, W8..11) = W9..W12. */
        g->c4[i] = w[i] + SSIG0(w[i + 1]) + w[9 + i];
        g->c5[i] = w[4 + i] + SSIG0(w[5 + i]);
    }
    g->k10[0] = w[10] + K[10]; g->k10[1] = w[11] + K[11]; g->k10[2] = g->k10[3] = 0;
    g->k12[0] = w[12] + K[12]; g->k12[1] = w[13] + K[13]; g->k12[2] = g->k12[3] = 0;
    g->k14[0] = w[14] + K[14]; g->k14[1] = w[15] + K[15]; g->k14[2] = g->k14[3] = 0;
}

/* The kernels never read the abort flag: this loop hands each call at most
 * VC_CHECK_INTERVAL nonces of one segment and reads the flag between calls,
 * which keeps the hot loops free of it and the stop latency set in one place
 * for every kernel. */
int vc_search(const uint8_t content[32], unsigned difficulty, uint64_t first, uint64_t last,
              const volatile uint8_t *abort_flag, int kernel, uint64_t *found)
{
    if (content == NULL || found == NULL || difficulty > VC_MAX_DIFFICULTY || first > last)
        return VC_BAD_ARGUMENT;

    if (kernel == VC_KERNEL_AUTO)
        kernel = auto_kernel();
    scan_fn scan = portable_scan;
    switch (kernel) {
    case VC_KERNEL_PORTABLE:
        break;
#if VC_HAVE_X86
    case VC_KERNEL_SHANI_SSE:
        if (!vc_sha_ni_available())
            return VC_BAD_ARGUMENT;
        scan = shani_scan;
        break;
    case VC_KERNEL_AVX512:
        if (!cpu_has_avx512vl())
            return VC_BAD_ARGUMENT;
        scan = avx512_scan;
        break;
#endif
    default:
        return VC_BAD_ARGUMENT;
    }

    if (abort_flag != NULL && *abort_flag)
        return VC_ABORTED;

    /* Top 4d bits must be zero; d = 0 gives mask 0 (every hash qualifies)
     * without the undefined shift by 64. */
    const uint64_t mask = difficulty ? ~(uint64_t)0 << (64 - 4 * difficulty) : 0;
    uint32_t words[8];
    for (int i = 0; i < 8; i++)
        words[i] = (uint32_t)content[4 * i] << 24 | (uint32_t)content[4 * i + 1] << 16 |
                   (uint32_t)content[4 * i + 2] << 8 | (uint32_t)content[4 * i + 3];

    struct segment g;
    uint64_t cur = first;
    for (;;) {
        /* A segment ends where W8 (the nonce's high word) changes. */
        const uint32_t hi = (uint32_t)(cur >> 32);
        const uint64_t seg_last = ((uint64_t)hi << 32 | 0xffffffffu) < last
                                      ? ((uint64_t)hi << 32 | 0xffffffffu)
                                      : last;
        segment_init(&g, words, hi);
        for (;;) {
            const uint64_t chunk_last =
                seg_last - cur >= VC_CHECK_INTERVAL ? cur + VC_CHECK_INTERVAL - 1 : seg_last;
            uint32_t hit;
            if (scan(&g, (uint32_t)cur, (uint32_t)(chunk_last - cur + 1), mask, &hit)) {
                *found = (uint64_t)hi << 32 | hit;
                return VC_FOUND;
            }
            if (chunk_last == last) /* checked before cur + 1 can wrap at 2**64 */
                return VC_EXHAUSTED;
            cur = chunk_last + 1;
            if (abort_flag != NULL && *abort_flag)
                return VC_ABORTED;
            if (chunk_last == seg_last)
                break;
        }
    }
}
