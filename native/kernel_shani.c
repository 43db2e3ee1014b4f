/* SHA-NI kernel: SHA-NI + SSE4.1/SSSE3. The dispatch picks it on CPUs with
 * SHA-NI but without AVX-512F/VL (e.g. AMD Zen 1-3, Intel Goldmont/Tremont);
 * where both exist the 16-lane AVX-512 kernel is faster (dispatch.c).
 *
 * It keeps VC_SHANI_STREAMS = 4 nonces in flight: sha256rnds2 has ~4 cycles
 * of latency but a new one can start every ~3 cycles, so a lone stream (what
 * hashlib does) is latency-bound while 4 streams keep the SHA unit busy; 2
 * and 3 streams were slower, 6 and 8 spill registers.
 *
 * Compiled with a function-level target attribute rather than -march, so the
 * same build loads on any x86-64 and dispatch.c calls this only after cpuid
 * reported SHA-NI.
 *
 * Tried and dropped: a hybrid running rounds 10..23 on AVX-512 inside this
 * kernel (no measurable gain); and a second build of it for SHA-NI +
 * AVX-512VL ("sha-ni-avx512", in git history), doing the schedule's sigma0
 * with vprord/vpternlogd because sha256msg1 competes with sha256rnds2 for the
 * SHA unit. It beat this kernel on Sapphire Rapids (~35 vs ~30 M/s; on Zen 4
 * the two overlapped, 47-64 vs 39-61 M/s over 7-9 runs) but needs AVX-512VL,
 * so every CPU that can run it also runs the 16-lane AVX-512 kernel, faster
 * on both (~63 and 66-69 M/s): the dispatch never picked it, and no test or
 * benchmark compared it with anything but hashlib.
 */
#include "kernel.h"

#if VC_HAVE_X86

#define NS VC_SHANI_STREAMS
#define KTARGET __attribute__((target("sha,sse4.1,ssse3")))
/* Apply a statement to every stream; fully unrolled so each array element
 * becomes its own register (or spill slot) and the streams interleave at
 * instruction granularity, which is what hides the sha256rnds2 latency. */
#define FOR_S _Pragma("GCC unroll 8") for (int s = 0; s < NS; s++)
#define LD(p) _mm_load_si128((const __m128i *)(const void *)(p))

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
        __m128i v_ = _mm_sha256msg1_epu32((Xa)[s], (Xb)[s]);                  \
        v_ = _mm_add_epi32(v_, _mm_alignr_epi8((Xd)[s], (Xc)[s], 4));         \
        (Xa)[s] = _mm_sha256msg2_epu32(v_, (Xd)[s]);                          \
    }

/* The scan_fn contract (kernel.h). */
KTARGET int shani_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
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

#endif /* VC_HAVE_X86 */
