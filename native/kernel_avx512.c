/* 16-lane AVX-512 kernel ("avx512x16"): AVX-512F/VL, no SHA-NI needed. The
 * dispatch picks it on every CPU that has AVX-512F and AVX-512VL, the fastest
 * kernel measured there (dispatch.c).
 *
 * It hashes 16 consecutive nonces per pass, one per 32-bit zmm lane, as
 * ordinary SHA-256 rounds: vprord makes every rotate one instruction and
 * vpternlogd does each three-input function (Sigma/sigma XORs, Ch, Maj) in
 * one, so a round is ~17 ops and a nonce, with all lane-constant work hoisted
 * (rounds 0..9 and the W9-free schedule terms as in kernel.h, h+K+W of rounds
 * 10..12, sigma0 of the constant W17/19/21, K from a pre-broadcast table, the
 * e half of round 63 skipped), ~1320 ops per 16 nonces (plus ~100 register
 * copies, as vpternlogd overwrites its first input). Sapphire Rapids runs
 * 512-bit integer ops on two ports (p0, p5), so that is ~665 cycles per pass,
 * ~42 cycles a nonce: the kernel runs at that bound (~63-66 M/s), which is why
 * two interleaved 16-lane groups (tried) gain nothing. sha256rnds2, by
 * contrast, issues only every ~3 cycles there, capping SHA-NI at 27 x 3 = 81
 * cycles a nonce (~36 M/s).
 *
 * Compiled with a function-level target attribute rather than -march, so the
 * same build loads on any x86-64 and dispatch.c calls this only after cpuid
 * reported AVX-512F and AVX-512VL.
 */
#include "kernel.h"

#if VC_HAVE_X86

/* A round is 6 rotates + 4 ternlogs + 6-7 adds. Written for NG independent
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

/* The scan_fn contract (kernel.h); 16 * NG consecutive nonces per pass, one
 * per 32-bit lane, lowest nonce in lane 0. */
A512 int avx512_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
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

#endif /* VC_HAVE_X86 */
