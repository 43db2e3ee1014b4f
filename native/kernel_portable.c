/* Portable kernel: plain C, runs on any CPU. The dispatch picks it where the
 * CPU has neither AVX-512F/VL nor SHA-NI (and on every non-x86 build);
 * search(..., portable=True) forces it, which is what the "portable C"
 * benchmark row measures.
 *
 * Same per-segment precomputation as the other kernels (kernel.h), rounds
 * fully unrolled.
 *
 * With GCC/Clang it hashes PLANES nonces at once using the compilers' generic
 * vector types: still plain C, it compiles to SSE2 on any x86-64, NEON on
 * ARM, or scalar code elsewhere, and runs ~2x faster than one nonce at a time
 * (the rounds are long dependency chains and, without BMI2, scalar rotates
 * cost extra copies). Other compilers get one lane; -DVC_SCALAR_PORTABLE
 * builds that one-lane version with GCC too, to check it by hand (no test
 * builds it).
 */
#include "kernel.h"

#if defined(__GNUC__) && !defined(VC_SCALAR_PORTABLE)
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

/* The scan_fn contract (kernel.h). */
int portable_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask, uint32_t *hit)
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
