/* votechain nonce search: one SHA-256 compression per nonce.
 *
 * Layout. hash = SHA-256(content || nonce_be8) with a 32-byte content, so the
 * 40-byte message plus padding is exactly one 64-byte block:
 *     W0..W7 = content (big-endian words)    -- constant for the whole search
 *     W8     = nonce >> 32                   -- constant for 2**32 nonces
 *     W9     = nonce & 0xffffffff            -- the only word that varies
 *     W10 = 0x80000000, W11..W14 = 0, W15 = 320 (bit length)
 * The nonce is deliberately the LAST thing hashed so that nearly all of the
 * work before it can be done once instead of once per nonce.
 *
 * Precomputation, done once per "segment" (a run of nonces sharing W8):
 *   - rounds 0..8 depend only on W0..W8: run them once;
 *   - round 9 adds W9 only through T1, so after round 9
 *         a = a9' + W9,  e = e9' + W9,  b,c,d,f,g,h constant,
 *     where a9', e9' are round 9 run with W9 = 0. Each nonce therefore starts
 *     at round 10 from a state that costs two additions to build;
 *   - W10..W15 are constants, so W+K for rounds 10..15 is precomputed;
 *   - in the schedule, the parts of W16..W23 not involving W9 are constants
 *     (W17, W19, W21 entirely), and with SHA-NI the first two sha256msg1
 *     results are constant too.
 * A nonce thus costs 54 rounds instead of 64, and 27 sha256rnds2 with SHA-NI.
 *
 * Check. Difficulty d means the top 4d bits of the digest are zero; those sit
 * in H0 = a + IV0 and H1 = b + IV1, so only those two final words are formed.
 *
 * Kernels, fastest first, as measured on the target VM (Xeon Sapphire Rapids
 * 2.9 GHz, KVM, 2 shared cores; best of 7 runs of 2**23 nonces at difficulty
 * 16, through Python; hashlib's single-stream SHA-256 did ~22.5 M
 * compressions/s in the same runs):
 *   avx512x16      ~63 M/s (2.8x hashlib)  AVX-512F/VL, no SHA-NI needed
 *   sha-ni-avx512  ~35 M/s (1.55x)         SHA-NI, AVX-512VL for sigma0
 *   sha-ni         ~29 M/s (1.27x)         SHA-NI + SSE4.1
 *   portable       ~10 M/s (0.45x)         plain C
 * VC_KERNEL_AUTO therefore takes avx512x16 on any CPU with AVX-512F/VL, else
 * sha-ni, else portable (sha-ni-avx512 stays for tests and comparison: every
 * CPU it runs on also runs avx512x16).
 *
 * avx512x16 ("AVX-512 kernel" below) hashes 16 consecutive nonces per pass,
 * one per 32-bit zmm lane, as ordinary SHA-256 rounds: vprord makes every
 * rotate one instruction and vpternlogd does each three-input function
 * (Sigma/sigma XORs, Ch, Maj) in one, so a round is ~17 ops and a nonce,
 * with all lane-constant work hoisted (rounds 0..9 and the W9-free schedule
 * terms as above, h+K+W of rounds 10..12, sigma0 of the constant W17/19/21,
 * K from a pre-broadcast table, the e half of round 63 skipped), ~1320 ops
 * per 16 nonces (plus ~100 register copies, as vpternlogd overwrites its
 * first input). Sapphire Rapids runs 512-bit integer ops on two ports
 * (p0, p5), so that is ~665 cycles per pass, ~42 cycles a nonce: the kernel
 * runs at that bound (~63-66 M/s), which is why two interleaved 16-lane
 * groups (tried) gain nothing. sha256rnds2, by contrast, issues only every ~3
 * cycles here, capping SHA-NI at 27 x 3 = 81 cycles a nonce (~36 M/s).
 * (Not measured elsewhere: on CPUs with faster SHA units and narrower
 * AVX-512, e.g. AMD Zen 4, SHA-NI might win; revisit the rule there.)
 *
 * The SHA-NI kernels keep VC_SHANI_STREAMS = 4 nonces in flight: sha256rnds2
 * has ~4 cycles of latency but a new one can start every ~3 cycles, so a lone
 * stream (what hashlib does) is latency-bound while 4 streams keep the SHA
 * unit busy; 2 and 3 streams were slower, 6 and 8 spill registers. The
 * x86 kernels are compiled with function-level target attributes and chosen
 * at run time (cpuid via __builtin_cpu_supports), so one build runs on any
 * x86-64. The portable kernel is plain C with the same precomputation and
 * fully unrolled rounds.
 *
 * Tried and dropped: a hybrid running rounds 10..23 on AVX-512 inside the
 * SHA-NI kernel (no measurable gain), and 2 x 16 lanes per pass (see above).
 *
 * Ordering. Streams/lanes hash consecutive nonces and hits are examined
 * lowest lane first, so the first qualifying nonce of the range is always the
 * one found. Every kernel is handed ranges inside one segment (same W8), so a
 * 16-lane pass never straddles 2**32 multiples: lanes past the range's end
 * hash wrapped W9 values and are masked off.
 */
#ifndef VC_KERNEL_TEMPLATE
#include "sha256_search.h"

#include <stddef.h>

/* The SHA-NI kernels need GCC/Clang target attributes and cpu detection. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define VC_HAVE_X86 1
#include <immintrin.h>
#else
#define VC_HAVE_X86 0
#endif

/* 16-byte aligned: the SHA-NI kernel loads K[t..t+3] as one vector. */
static _Alignas(16) const uint32_t K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u,
};

static const uint32_t IV[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR((x), 2) ^ ROTR((x), 13) ^ ROTR((x), 22))
#define BSIG1(x) (ROTR((x), 6) ^ ROTR((x), 11) ^ ROTR((x), 25))
#define SSIG0(x) (ROTR((x), 7) ^ ROTR((x), 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR((x), 17) ^ ROTR((x), 19) ^ ((x) >> 10))
#define CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

/* Everything that is constant while W8 is: see the comment at the top. */
struct segment {
    uint32_t w[16];  /* W0..W15 with W9 = 0 */
    uint32_t s9[8];  /* a..h after round 9 computed with W9 = 0 */
    /* Portable kernel: W16 = c16 + W9, W18 = s1(W16) + c18, W20 = s1(W18) + c20,
     * W22 = s1(W20) + c22, W23 = W16 + c23; W17, W19, W21 are constants. */
    uint32_t c16, w17, c18, w19, c20, w21, c22, c23;
    /* SHA-NI kernel, as 4 x 32-bit lanes (lane 0 first), 16-byte aligned. */
    _Alignas(16) uint32_t abef9[4]; /* lanes F, E, B, A */
    _Alignas(16) uint32_t cdgh9[4]; /* lanes H, G, D, C */
    _Alignas(16) uint32_t m2[4];    /* W8..W11 with W9 = 0 */
    _Alignas(16) uint32_t m3[4];    /* W12..W15 */
    _Alignas(16) uint32_t c4[4];    /* sha256msg1(W0..3, W4..7) + W9..W12, W9 = 0 */
    _Alignas(16) uint32_t c5[4];    /* sha256msg1(W4..7, W8..11): no W9 in it */
    _Alignas(16) uint32_t k10[4];   /* W+K for rounds 10,11 (lanes 0,1) */
    _Alignas(16) uint32_t k12[4];   /* W+K for rounds 12,13 */
    _Alignas(16) uint32_t k14[4];   /* W+K for rounds 14,15 */
};

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
     * W9 = 0 gives the base to which each nonce adds its W9 (see top). This
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

/* ---- portable kernel --------------------------------------------------- */

/* With GCC/Clang the portable kernel hashes PLANES nonces at once using the
 * compilers' generic vector types: still plain C, it compiles to SSE2 on any
 * x86-64, NEON on ARM, or scalar code elsewhere, and runs ~2x faster than one
 * nonce at a time (the rounds are long dependency chains and, without BMI2,
 * scalar rotates cost extra copies). Other compilers get one lane. */
#if defined(__GNUC__) && !defined(VC_SCALAR_PORTABLE) /* the knob is for testing */
#define PLANES 4
typedef uint32_t plane_t __attribute__((vector_size(4 * PLANES)));
#define PLANE(x, i) ((x)[i])
static const plane_t PLANE_IOTA = {0, 1, 2, 3};
#else
#define PLANES 1
typedef uint32_t plane_t;
#define PLANE(x, i) (x)
#define PLANE_IOTA 0u
#endif

/* One round; writes the new e into d and the new a into h, so that calling it
 * with the names rotated by one each round avoids all register moves.
 * Sigma1/Sigma0 are nested (3 rotates, 2 xors, one copy of x live). */
#define PBSIG1(x) ROTR((x) ^ ROTR((x) ^ ROTR((x), 14), 5), 6)
#define PBSIG0(x) ROTR((x) ^ ROTR((x) ^ ROTR((x), 9), 11), 2)
#define PR(a, b, c, d, e, f, g, h, kw)                                    \
    do {                                                                  \
        plane_t t1_ = (h) + PBSIG1(e) + CH((e), (f), (g)) + (kw);         \
        (d) += t1_;                                                       \
        (h) = t1_ + PBSIG0(a) + MAJ((a), (b), (c));                       \
    } while (0)
/* Message word t >= 24, kept in a 16-word ring. */
#define PW(t) (w[(t) & 15] += SSIG1(w[((t) - 2) & 15]) + w[((t) - 7) & 15] + SSIG0(w[((t) - 15) & 15]))
#define PR8(t)                                                            \
    PR(a, b, c, d, e, f, gg, h, K[t] + PW(t));                            \
    PR(h, a, b, c, d, e, f, gg, K[(t) + 1] + PW((t) + 1));                \
    PR(gg, h, a, b, c, d, e, f, K[(t) + 2] + PW((t) + 2));                \
    PR(f, gg, h, a, b, c, d, e, K[(t) + 3] + PW((t) + 3));                \
    PR(e, f, gg, h, a, b, c, d, K[(t) + 4] + PW((t) + 4));                \
    PR(d, e, f, gg, h, a, b, c, K[(t) + 5] + PW((t) + 5));                \
    PR(c, d, e, f, gg, h, a, b, K[(t) + 6] + PW((t) + 6));                \
    PR(b, c, d, e, f, gg, h, a, K[(t) + 7] + PW((t) + 7))

/* Hash nonces with W9 = lo .. lo+n-1 (n >= 1, lo+n-1 <= 0xffffffff).
 * Returns 1 and the first qualifying W9 in *hit, else 0. */
static int portable_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                         uint32_t *hit)
{
    const uint32_t *cw = g->w;
    /* W+K for rounds 10..15 and the odd (constant) words 17, 19, 21. */
    const uint32_t k10 = K[10] + cw[10], k11 = K[11] + cw[11], k12 = K[12] + cw[12];
    const uint32_t k13 = K[13] + cw[13], k14 = K[14] + cw[14], k15 = K[15] + cw[15];
    const uint32_t k17 = K[17] + g->w17, k19 = K[19] + g->w19, k21 = K[21] + g->w21;
    const plane_t zero = {0};
    for (uint32_t done = 0; done < n; done += PLANES) {
        /* Lanes past n (last group only) wrap harmlessly and are ignored. */
        const plane_t w9 = PLANE_IOTA + (lo + done);
        plane_t a = g->s9[0] + w9, b = zero + g->s9[1], c = zero + g->s9[2];
        plane_t d = zero + g->s9[3], e = g->s9[4] + w9, f = zero + g->s9[5];
        plane_t gg = zero + g->s9[6], h = zero + g->s9[7];
        plane_t w[16];
        /* Ring slot t & 15 holds W[t]; slots 0..7 get W16..W23 directly. */
        w[0] = g->c16 + w9;
        w[1] = zero + g->w17;
        w[2] = SSIG1(w[0]) + g->c18;
        w[3] = zero + g->w19;
        w[4] = SSIG1(w[2]) + g->c20;
        w[5] = zero + g->w21;
        w[6] = SSIG1(w[4]) + g->c22;
        w[7] = w[0] + g->c23;
        w[8] = zero + cw[8];
        w[9] = w9;
        for (int t = 10; t < 16; t++)
            w[t] = zero + cw[t];

        PR(a, b, c, d, e, f, gg, h, k10);
        PR(h, a, b, c, d, e, f, gg, k11);
        PR(gg, h, a, b, c, d, e, f, k12);
        PR(f, gg, h, a, b, c, d, e, k13);
        PR(e, f, gg, h, a, b, c, d, k14);
        PR(d, e, f, gg, h, a, b, c, k15);
        PR(c, d, e, f, gg, h, a, b, K[16] + w[0]);
        PR(b, c, d, e, f, gg, h, a, k17);
        /* Names are back in order for round 18. */
        PR(a, b, c, d, e, f, gg, h, K[18] + w[2]);
        PR(h, a, b, c, d, e, f, gg, k19);
        PR(gg, h, a, b, c, d, e, f, K[20] + w[4]);
        PR(f, gg, h, a, b, c, d, e, k21);
        PR(e, f, gg, h, a, b, c, d, K[22] + w[6]);
        PR(d, e, f, gg, h, a, b, c, K[23] + w[7]);
        PR(c, d, e, f, gg, h, a, b, K[24] + PW(24));
        PR(b, c, d, e, f, gg, h, a, K[25] + PW(25));
        PR8(26);
        PR8(34);
        PR8(42);
        PR8(50);
        /* Rounds 58..63: the new a lands in h, gg, f, e, d, c in turn. */
        PR(a, b, c, d, e, f, gg, h, K[58] + PW(58));
        PR(h, a, b, c, d, e, f, gg, K[59] + PW(59));
        PR(gg, h, a, b, c, d, e, f, K[60] + PW(60));
        PR(f, gg, h, a, b, c, d, e, K[61] + PW(61));
        PR(e, f, gg, h, a, b, c, d, K[62] + PW(62));
        PR(d, e, f, gg, h, a, b, c, K[63] + PW(63));
        /* Final a is in c and final b (a of round 62) in d; lanes in nonce
         * order, so the first hit is the lowest nonce. */
        for (uint32_t i = 0; i < PLANES && done + i < n; i++) {
            const uint64_t top = ((uint64_t)(PLANE(c, i) + IV[0]) << 32) |
                                 (uint32_t)(PLANE(d, i) + IV[1]);
            if ((top & mask) == 0) {
                *hit = lo + done + i;
                return 1;
            }
        }
    }
    return 0;
}

/* ---- SHA-NI kernels ---------------------------------------------------- */

#if VC_HAVE_X86
/* The kernel below is written once and compiled twice by including this file
 * into itself (VC_KERNEL_TEMPLATE), each time with a different function-level
 * target, because the best code differs:
 *   shani_scan_sse:    SHA-NI + SSE4.1, runs on every SHA-NI CPU (Goldmont,
 *                      Zen, ...); sha256msg1 does the schedule's sigma0.
 *   shani_scan_avx512: SHA-NI + AVX-512VL. sha256msg1 occupies the SHA unit
 *                      that sha256rnds2 needs (~1.7 cycles each, measured),
 *                      so sigma0 is done instead with vprord/vpternlogd on
 *                      the vector ports; VEX/EVEX 3-operand forms also save
 *                      register copies.
 * Measured on Sapphire Rapids: ~35 vs ~30 M nonces/s. */
#define VC_KERNEL_TEMPLATE 1
#define VC_KNAME shani_scan_sse
#define VC_KTARGET "sha,sse4.1,ssse3"
#define VC_KAVX512 0
#include "sha256_search.c"
#undef VC_KNAME
#undef VC_KTARGET
#undef VC_KAVX512
#define VC_KNAME shani_scan_avx512
#define VC_KTARGET "sha,sse4.1,ssse3,avx2,avx512f,avx512vl"
#define VC_KAVX512 1
#include "sha256_search.c"
#undef VC_KERNEL_TEMPLATE

/* ---- AVX-512 kernel ---------------------------------------------------- */

/* 16 nonces per pass, one per 32-bit lane of a zmm register: plain SHA-256
 * rounds on vectors, with vprord for every rotate and vpternlogd for each
 * three-input function (Sigma0/Sigma1/sigma0/sigma1 XORs, Ch, Maj), so a
 * round is 6 rotates + 4 ternlogs + 6-7 adds. Written for NG independent
 * 16-lane groups per pass; NG = 2 measured no faster than 1 (one group
 * already keeps both 512-bit ALU ports busy, the out-of-order window
 * overlaps consecutive passes, and 2 groups spill), so NG = 1. */
#define A512 __attribute__((target("avx512f,avx512vl")))
#define NG 1
#define FOR_G _Pragma("GCC unroll 4") for (int q = 0; q < NG; q++)
#define VB(x) _mm512_set1_epi32((int)(x))
#define VADD(x, y) _mm512_add_epi32((x), (y))
#define VX3(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0x96)
#define VBSIG0(x) VX3(_mm512_ror_epi32((x), 2), _mm512_ror_epi32((x), 13), _mm512_ror_epi32((x), 22))
#define VBSIG1(x) VX3(_mm512_ror_epi32((x), 6), _mm512_ror_epi32((x), 11), _mm512_ror_epi32((x), 25))
#define VSSIG0(x) VX3(_mm512_ror_epi32((x), 7), _mm512_ror_epi32((x), 18), _mm512_srli_epi32((x), 3))
#define VSSIG1(x) VX3(_mm512_ror_epi32((x), 17), _mm512_ror_epi32((x), 19), _mm512_srli_epi32((x), 10))
#define VCH(e, f, g) _mm512_ternarylogic_epi32((e), (f), (g), 0xca)
#define KV(t) _mm512_load_si512((const void *)kt[t])
#define VMAJ(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0xe8)

/* K broadcast to 16 lanes, so rounds add K[t] straight from memory instead
 * of materialising each constant with a broadcast uop (GCC's choice for
 * _mm512_set1_epi32 of a literal). */
#define X16(k) {k, k, k, k, k, k, k, k, k, k, k, k, k, k, k, k}
static _Alignas(64) const uint32_t K16[64][16] = {
    X16(0x428a2f98u), X16(0x71374491u), X16(0xb5c0fbcfu), X16(0xe9b5dba5u),
    X16(0x3956c25bu), X16(0x59f111f1u), X16(0x923f82a4u), X16(0xab1c5ed5u),
    X16(0xd807aa98u), X16(0x12835b01u), X16(0x243185beu), X16(0x550c7dc3u),
    X16(0x72be5d74u), X16(0x80deb1feu), X16(0x9bdc06a7u), X16(0xc19bf174u),
    X16(0xe49b69c1u), X16(0xefbe4786u), X16(0x0fc19dc6u), X16(0x240ca1ccu),
    X16(0x2de92c6fu), X16(0x4a7484aau), X16(0x5cb0a9dcu), X16(0x76f988dau),
    X16(0x983e5152u), X16(0xa831c66du), X16(0xb00327c8u), X16(0xbf597fc7u),
    X16(0xc6e00bf3u), X16(0xd5a79147u), X16(0x06ca6351u), X16(0x14292967u),
    X16(0x27b70a85u), X16(0x2e1b2138u), X16(0x4d2c6dfcu), X16(0x53380d13u),
    X16(0x650a7354u), X16(0x766a0abbu), X16(0x81c2c92eu), X16(0x92722c85u),
    X16(0xa2bfe8a1u), X16(0xa81a664bu), X16(0xc24b8b70u), X16(0xc76c51a3u),
    X16(0xd192e819u), X16(0xd6990624u), X16(0xf40e3585u), X16(0x106aa070u),
    X16(0x19a4c116u), X16(0x1e376c08u), X16(0x2748774cu), X16(0x34b0bcb5u),
    X16(0x391c0cb3u), X16(0x4ed8aa4au), X16(0x5b9cca4fu), X16(0x682e6ff3u),
    X16(0x748f82eeu), X16(0x78a5636fu), X16(0x84c87814u), X16(0x8cc70208u),
    X16(0x90befffau), X16(0xa4506cebu), X16(0xbef9a3f7u), X16(0xc67178f2u),
};
#undef X16

/* One round given HKW = h + K + W; new e into d, new a into h (names rotate
 * as in PR). */
#define VRH(a, b, c, d, e, f, g, h, hkw)                                        \
    FOR_G {                                                                     \
        __m512i t1_ = VADD(hkw, VADD(VBSIG1(e[q]), VCH(e[q], f[q], g[q])));     \
        d[q] = VADD(d[q], t1_);                                                 \
        h[q] = VADD(t1_, VADD(VBSIG0(a[q]), VMAJ(a[q], b[q], c[q])));           \
    }
/* Round with a lane-constant K+W (broadcast KW) or a varying W (VR). */
#define VRC(a, b, c, d, e, f, g, h, kw) VRH(a, b, c, d, e, f, g, h, VADD(h[q], kw))
#define VR(a, b, c, d, e, f, g, h, t) VRH(a, b, c, d, e, f, g, h, VADD(VADD(h[q], KV(t)), W(t)))
/* Message word t in a 16-slot ring per group. */
#define W(t) w[q][(t) & 15]
#define VW(t) FOR_G W(t) = VADD(VADD(W(t), VSSIG1(W((t) - 2))), VADD(W((t) - 7), VSSIG0(W((t) - 15))))
#define VR8(t)                                                                  \
    VW(t); VR(a, b, c, d, e, f, gg, h, t);                                      \
    VW((t) + 1); VR(h, a, b, c, d, e, f, gg, (t) + 1);                          \
    VW((t) + 2); VR(gg, h, a, b, c, d, e, f, (t) + 2);                          \
    VW((t) + 3); VR(f, gg, h, a, b, c, d, e, (t) + 3);                          \
    VW((t) + 4); VR(e, f, gg, h, a, b, c, d, (t) + 4);                          \
    VW((t) + 5); VR(d, e, f, gg, h, a, b, c, (t) + 5);                          \
    VW((t) + 6); VR(c, d, e, f, gg, h, a, b, (t) + 6);                          \
    VW((t) + 7); VR(b, c, d, e, f, gg, h, a, (t) + 7)

/* Same contract as portable_scan; 16 * NG consecutive nonces per pass, one
 * per 32-bit lane, lowest nonce in lane 0. */
A512 static int avx512_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                            uint32_t *hit)
{
    const uint32_t *cw = g->w;
    const uint32_t *s = g->s9;
    /* Hide the table's contents from the optimiser, or it folds them back
     * into broadcasts of literals. */
    const uint32_t(*kt)[16] = K16;
    __asm__("" : "+r"(kt));
    /* Lane-constant values: h + K + W for rounds 10..12 (h is still one of
     * the round-9 constants), K + W for 13..15, 17, 19, 21, and the constant
     * parts of the schedule words 24..36 (cNN). */
    const __m512i hkw10 = VB(s[7] + K[10] + cw[10]), hkw11 = VB(s[6] + K[11] + cw[11]);
    const __m512i hkw12 = VB(s[5] + K[12] + cw[12]);
    const __m512i kw13 = VB(K[13] + cw[13]), kw14 = VB(K[14] + cw[14]), kw15 = VB(K[15] + cw[15]);
    const __m512i kw17 = VB(K[17] + g->w17), kw19 = VB(K[19] + g->w19), kw21 = VB(K[21] + g->w21);
    const __m512i c16 = VB(g->c16), c18 = VB(g->c18), c20 = VB(g->c20), c22 = VB(g->c22);
    const __m512i c23 = VB(g->c23);
    const __m512i c24 = VB(g->w17 + cw[8]);
    const __m512i c25 = VB(SSIG0(cw[10]));
    const __m512i c26 = VB(g->w19 + SSIG0(cw[11]) + cw[10]);
    const __m512i c27 = VB(SSIG0(cw[12]) + cw[11]);
    const __m512i c28 = VB(g->w21 + SSIG0(cw[13]) + cw[12]);
    const __m512i c29 = VB(SSIG0(cw[14]) + cw[13]);
    const __m512i c30 = VB(SSIG0(cw[15]) + cw[14]);
    const __m512i mhi = VB(mask >> 32), mlo = VB((uint32_t)mask);
    const int need_b = (uint32_t)mask != 0; /* difficulty > 8 */
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);

    for (uint32_t done = 0; done < n; done += 16 * NG) {
        /* Lanes past n (last pass only) hash wrapped W9 values of the same
         * segment; harmless, they are masked off below. */
        __m512i a[NG], b[NG], c[NG], d[NG], e[NG], f[NG], gg[NG], h[NG], w[NG][16];
        FOR_G {
            const __m512i w9 = VADD(iota, VB(lo + done + 16u * (uint32_t)q));
            a[q] = VADD(w9, VB(s[0]));
            b[q] = VB(s[1]);
            c[q] = VB(s[2]);
            d[q] = VB(s[3]);
            e[q] = VADD(w9, VB(s[4]));
            f[q] = VB(s[5]);
            gg[q] = VB(s[6]);
            h[q] = VB(s[7]);
            /* W16..W30 from the lane-constant parts (see segment_init). */
            W(16) = VADD(w9, c16);
            W(18) = VADD(VSSIG1(W(16)), c18);
            W(20) = VADD(VSSIG1(W(18)), c20);
            W(22) = VADD(VSSIG1(W(20)), c22);
            W(23) = VADD(W(16), c23);
            W(24) = VADD(VADD(VSSIG1(W(22)), VSSIG0(w9)), c24);
            W(25) = VADD(VADD(VSSIG1(W(23)), W(18)), VADD(w9, c25));
            W(26) = VADD(VSSIG1(W(24)), c26);
            W(27) = VADD(VSSIG1(W(25)), VADD(W(20), c27));
            W(28) = VADD(VSSIG1(W(26)), c28);
            W(29) = VADD(VSSIG1(W(27)), VADD(W(22), c29));
            W(30) = VADD(VSSIG1(W(28)), VADD(W(23), c30));
        }
        VRH(a, b, c, d, e, f, gg, h, hkw10);
        VRH(h, a, b, c, d, e, f, gg, hkw11);
        VRH(gg, h, a, b, c, d, e, f, hkw12);
        VRC(f, gg, h, a, b, c, d, e, kw13);
        VRC(e, f, gg, h, a, b, c, d, kw14);
        VRC(d, e, f, gg, h, a, b, c, kw15);
        VR(c, d, e, f, gg, h, a, b, 16);
        VRC(b, c, d, e, f, gg, h, a, kw17);
        VR(a, b, c, d, e, f, gg, h, 18);
        VRC(h, a, b, c, d, e, f, gg, kw19);
        VR(gg, h, a, b, c, d, e, f, 20);
        VRC(f, gg, h, a, b, c, d, e, kw21);
        VR(e, f, gg, h, a, b, c, d, 22);
        VR(d, e, f, gg, h, a, b, c, 23);
        VR(c, d, e, f, gg, h, a, b, 24);
        VR(b, c, d, e, f, gg, h, a, 25);
        VR(a, b, c, d, e, f, gg, h, 26);
        VR(h, a, b, c, d, e, f, gg, 27);
        VR(gg, h, a, b, c, d, e, f, 28);
        VR(f, gg, h, a, b, c, d, e, 29);
        VR(e, f, gg, h, a, b, c, d, 30);
        /* W31 onwards: full schedule, except sigma0 of the constant W17,
         * W19, W21 (in W32, W34, W36) and the constant W15, W17, W19, W21
         * terms, which the compiler folds as broadcasts. Slots still holding
         * W15, W17, W19, W21 are filled with their broadcasts first. */
        FOR_G {
            W(15) = VB(cw[15]);
            W(17) = VB(g->w17);
            W(19) = VB(g->w19);
            W(21) = VB(g->w21);
        }
        VW(31); VR(d, e, f, gg, h, a, b, c, 31);
        VW(32); VR(c, d, e, f, gg, h, a, b, 32);
        VW(33); VR(b, c, d, e, f, gg, h, a, 33);
        VR8(34);
        VR8(42);
        VR8(50);
        /* Rounds 58..63; the final round needs only the new a (in c) and
         * round 62's a (in d) is H1 - IV1. */
        VW(58); VR(a, b, c, d, e, f, gg, h, 58);
        VW(59); VR(h, a, b, c, d, e, f, gg, 59);
        VW(60); VR(gg, h, a, b, c, d, e, f, 60);
        VW(61); VR(f, gg, h, a, b, c, d, e, 61);
        VW(62); VR(e, f, gg, h, a, b, c, d, 62);
        VW(63);
        FOR_G {
            __m512i t1_ = VADD(VADD(VADD(c[q], KV(63)), W(63)),
                               VADD(VBSIG1(h[q]), VCH(h[q], a[q], b[q])));
            c[q] = VADD(t1_, VADD(VBSIG0(d[q]), VMAJ(d[q], e[q], f[q])));
        }
        /* Lanes whose H0 (and, above difficulty 8, H1) has the masked bits
         * clear; lowest lane = lowest nonce. */
        FOR_G {
            __mmask16 m = _mm512_testn_epi32_mask(VADD(c[q], VB(IV[0])), mhi);
            if (need_b)
                m &= _mm512_testn_epi32_mask(VADD(d[q], VB(IV[1])), mlo);
            if (__builtin_expect(m != 0, 0)) {
                const uint32_t base = done + 16u * (uint32_t)q;
                if (base >= n)
                    return 0;
                if (n - base < 16)
                    m &= (__mmask16)((1u << (n - base)) - 1);
                if (m) {
                    *hit = lo + base + (uint32_t)__builtin_ctz(m);
                    return 1;
                }
            }
        }
    }
    return 0;
}

#undef A512
#undef NG
#undef FOR_G
#undef VB
#undef VADD
#undef VX3
#undef VBSIG0
#undef VBSIG1
#undef VSSIG0
#undef VSSIG1
#undef VCH
#undef KV
#undef VMAJ
#undef VRH
#undef VRC
#undef VR
#undef W
#undef VW
#undef VR8

static int cpu_has_avx512vl(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    }
    return cached;
}
#endif /* VC_HAVE_X86 */

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
    case VC_KERNEL_SHANI_AVX512:
        return "sha-ni-avx512";
    case VC_KERNEL_AVX512:
        return "avx512x16";
    default:
        return "unknown";
    }
}

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

typedef int (*scan_fn)(const struct segment *, uint32_t, uint32_t, uint64_t, uint32_t *);

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
        scan = shani_scan_sse;
        break;
    case VC_KERNEL_SHANI_AVX512:
        if (!vc_sha_ni_available() || !cpu_has_avx512vl())
            return VC_BAD_ARGUMENT;
        scan = shani_scan_avx512;
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

#else /* VC_KERNEL_TEMPLATE: one SHA-NI kernel variant, see "SHA-NI kernels" */

#define NS VC_SHANI_STREAMS
#define KTARGET __attribute__((target(VC_KTARGET)))
/* Apply a statement to every stream; fully unrolled so each array element
 * becomes its own register (or spill slot) and the streams interleave at
 * instruction granularity, which is what hides the sha256rnds2 latency. */
#define FOR_S _Pragma("GCC unroll 8") for (int s = 0; s < NS; s++)
#define LD(p) _mm_load_si128((const __m128i *)(const void *)(p))

#if VC_KAVX512
/* X + sigma0(next four words), the work of sha256msg1, off the SHA unit. */
KTARGET static inline __m128i msg1_avx512(__m128i x, __m128i y)
{
    const __m128i n = _mm_alignr_epi8(y, x, 4);
    return _mm_add_epi32(x, _mm_ternarylogic_epi32(_mm_ror_epi32(n, 7), _mm_ror_epi32(n, 18),
                                                   _mm_srli_epi32(n, 3), 0x96));
}
#define MSG1(x, y) msg1_avx512((x), (y))
#else
#define MSG1(x, y) _mm_sha256msg1_epu32((x), (y))
#endif

/* Two sha256rnds2: rounds t..t+3 from message vector X (= W[t..t+3]). The
 * instruction takes W+K for two rounds from the low half of its 3rd operand;
 * the CD argument receives the new ABEF each time, so AB/CD swap twice. */
#define ROUNDS4(AB, CD, X, t)                                                 \
    FOR_S {                                                                   \
        __m128i mk_ = _mm_add_epi32((X)[s], LD(&K[t]));                       \
        (CD)[s] = _mm_sha256rnds2_epu32((CD)[s], (AB)[s], mk_);               \
        mk_ = _mm_shuffle_epi32(mk_, 0x0e);                                   \
        (AB)[s] = _mm_sha256rnds2_epu32((AB)[s], (CD)[s], mk_);               \
    }

/* Xa (= W[t-16..t-13]) becomes W[t..t+3]; Xb, Xc, Xd hold t-12, t-8, t-4:
 * W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]. */
#define SCHED(Xa, Xb, Xc, Xd)                                                 \
    FOR_S {                                                                   \
        __m128i v_ = MSG1((Xa)[s], (Xb)[s]);                                  \
        v_ = _mm_add_epi32(v_, _mm_alignr_epi8((Xd)[s], (Xc)[s], 4));         \
        (Xa)[s] = _mm_sha256msg2_epu32(v_, (Xd)[s]);                          \
    }

/* Same contract as portable_scan. */
KTARGET static int VC_KNAME(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                            uint32_t *hit)
{
    const __m128i cdgh9 = LD(g->cdgh9), m3 = LD(g->m3), c5 = LD(g->c5);
    const __m128i k10 = LD(g->k10), k12 = LD(g->k12), k14 = LD(g->k14);
    /* ABEF of the IV: adding it forms H0:H1 in the high 64-bit lane. */
    const __m128i iv = _mm_set_epi32((int)IV[0], (int)IV[1], (int)IV[4], (int)IV[5]);
    const __m128i maskv = _mm_set_epi64x((long long)mask, 0);
    const __m128i zero = _mm_setzero_si128();
    /* Running per-batch vectors with W9 = lo + done folded into the lanes
     * where W9 appears (A and E of the round-10 state, lane 1 of W8..W11,
     * lane 0 of the W16..W19 precursor); stream s then adds s. */
    const __m128i lov = _mm_set1_epi32((int)lo);
    __m128i abef_run = _mm_add_epi32(LD(g->abef9), _mm_and_si128(lov, _mm_set_epi32(-1, 0, -1, 0)));
    __m128i m2_run = _mm_add_epi32(LD(g->m2), _mm_and_si128(lov, _mm_set_epi32(0, 0, -1, 0)));
    __m128i c4_run = _mm_add_epi32(LD(g->c4), _mm_and_si128(lov, _mm_set_epi32(0, 0, 0, -1)));
    const __m128i step_abef = _mm_set_epi32(NS, 0, NS, 0);
    const __m128i step_m2 = _mm_set_epi32(0, 0, NS, 0);
    const __m128i step_c4 = _mm_set_epi32(0, 0, 0, NS);

    for (uint32_t done = 0; done < n; done += NS) {
        /* Lanes past n (last batch only) hash wrapped W9 values; harmless,
         * their results are ignored below. */
        __m128i A[NS], C[NS], X0[NS], X1[NS], X2[NS], X3[NS];
        FOR_S {
            A[s] = _mm_add_epi32(abef_run, _mm_set_epi32(s, 0, s, 0));
            C[s] = cdgh9;
            X2[s] = _mm_add_epi32(m2_run, _mm_set_epi32(0, 0, s, 0)); /* W8..W11 */
            X3[s] = m3;                                                /* W12..W15 */
        }
        abef_run = _mm_add_epi32(abef_run, step_abef);
        m2_run = _mm_add_epi32(m2_run, step_m2);

        /* Rounds 10-11: one rnds2, after which ABEF lives in C and CDGH in A. */
        FOR_S C[s] = _mm_sha256rnds2_epu32(C[s], A[s], k10);
        /* Rounds 12-15: W+K fully constant; ABEF back in C afterwards. */
        FOR_S {
            A[s] = _mm_sha256rnds2_epu32(A[s], C[s], k12);
            C[s] = _mm_sha256rnds2_epu32(C[s], A[s], k14);
        }
        /* W16..19: msg1(W0..3, W4..7) + W9..W12 is the precomputed c4. */
        FOR_S X0[s] = _mm_sha256msg2_epu32(_mm_add_epi32(c4_run, _mm_set_epi32(0, 0, 0, s)), m3);
        c4_run = _mm_add_epi32(c4_run, step_c4);
        ROUNDS4(C, A, X0, 16);
        /* W20..23: msg1(W4..7, W8..11) has no W9 in it: the constant c5. */
        FOR_S X1[s] = _mm_sha256msg2_epu32(_mm_add_epi32(c5, _mm_alignr_epi8(X0[s], X3[s], 4)),
                                           X0[s]);
        ROUNDS4(C, A, X1, 20);
        SCHED(X2, X3, X0, X1); ROUNDS4(C, A, X2, 24);
        SCHED(X3, X0, X1, X2); ROUNDS4(C, A, X3, 28);
        SCHED(X0, X1, X2, X3); ROUNDS4(C, A, X0, 32);
        SCHED(X1, X2, X3, X0); ROUNDS4(C, A, X1, 36);
        SCHED(X2, X3, X0, X1); ROUNDS4(C, A, X2, 40);
        SCHED(X3, X0, X1, X2); ROUNDS4(C, A, X3, 44);
        SCHED(X0, X1, X2, X3); ROUNDS4(C, A, X0, 48);
        SCHED(X1, X2, X3, X0); ROUNDS4(C, A, X1, 52);
        SCHED(X2, X3, X0, X1); ROUNDS4(C, A, X2, 56);
        SCHED(X3, X0, X1, X2); ROUNDS4(C, A, X3, 60);

        /* C = final ABEF. Hit when (H0:H1 & mask) == 0; the low 64-bit lane
         * is masked to zero and always compares equal, so only bit 1 of the
         * movemask matters. Hits are rare: test the OR of all streams. */
        __m128i eq[NS], any = zero;
        FOR_S {
            eq[s] = _mm_cmpeq_epi64(_mm_and_si128(_mm_add_epi32(C[s], iv), maskv), zero);
            any = _mm_or_si128(any, eq[s]);
        }
        if (__builtin_expect(_mm_movemask_pd(_mm_castsi128_pd(any)) & 2, 0)) {
            for (int s = 0; s < NS; s++) {
                if ((_mm_movemask_pd(_mm_castsi128_pd(eq[s])) & 2) && done + (uint32_t)s < n) {
                    *hit = lo + done + (uint32_t)s;
                    return 1;
                }
            }
        }
    }
    return 0;
}

#undef NS
#undef KTARGET
#undef FOR_S
#undef LD
#undef MSG1
#undef ROUNDS4
#undef SCHED
#endif /* VC_KERNEL_TEMPLATE */
