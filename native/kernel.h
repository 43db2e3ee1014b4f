/* Internal to native/: what every nonce-search kernel and the dispatch share.
 * Not a public header (sha256_search.h is): only the native/ C files include it.
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
 * Precomputation, done once per "segment" (a run of nonces sharing W8), into
 * struct segment below by segment_init (dispatch.c):
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
 * A segment is the unit because W8 is the only other word a range of nonces
 * can change: within one, every kernel adds W9 to the same constants.
 *
 * Check. Difficulty d means the top 4d bits of the digest are zero; those sit
 * in H0 = a + IV0 and H1 = b + IV1, so only those two final words are formed.
 *
 * Ordering. Streams/lanes hash consecutive nonces and hits are examined
 * lowest lane first, so the first qualifying nonce of the range is always the
 * one found. Every kernel is handed ranges inside one segment (same W8), so a
 * 16-lane pass never straddles 2**32 multiples: lanes past the range's end
 * hash wrapped W9 values and are masked off.
 */
#ifndef VOTECHAIN_KERNEL_H
#define VOTECHAIN_KERNEL_H

#include "sha256_search.h"

#include <stdint.h>

/* The x86 kernels need GCC/Clang function-level target attributes and cpu
 * detection (__builtin_cpu_supports); elsewhere only the portable one builds. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define VC_HAVE_X86 1
#include <immintrin.h>
#else
#define VC_HAVE_X86 0
#endif

/* The kernels are reached only through dispatch.c's function pointers: keep
 * their names out of the extension module's dynamic symbol table. */
#if defined(__GNUC__)
#define VC_INTERNAL __attribute__((visibility("hidden")))
#else
#define VC_INTERNAL
#endif

/* Static in the header rather than one extern table: each kernel's fully
 * unrolled rounds index K with constants, and only a definition its compiler
 * can see lets it fold K[t] (+ a constant W) into an immediate. 256 bytes per
 * file. 16-byte aligned: the SHA-NI kernel loads K[t..t+3] as one vector. */
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

/* Everything that is constant while W8 is (see the top of this file). One
 * struct serves every kernel, each in the shape it loads fastest: plain words
 * for the portable and AVX-512 kernels (broadcast per lane), and for SHA-NI
 * ready-made 128-bit vectors in the instruction's ABEF/CDGH lane order, so
 * the per-segment shuffling is done once here, not per nonce. */
struct segment {
    uint32_t w[16];  /* W0..W15 with W9 = 0 */
    uint32_t s9[8];  /* a..h after round 9 computed with W9 = 0 */
    /* W16 = c16 + W9, W18 = s1(W16) + c18, W20 = s1(W18) + c20,
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

/* The contract of every kernel: hash the nonces with W9 = lo .. lo+n-1 of
 * segment g (n >= 1, lo+n-1 <= 0xffffffff); return 1 with the first W9 whose
 * (H0:H1 & mask) == 0 in *hit, else 0. No abort check inside: vc_search
 * hands out at most VC_CHECK_INTERVAL nonces per call and checks between. */
typedef int (*scan_fn)(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                       uint32_t *hit);

/* kernel_portable.c: plain C, any CPU. */
VC_INTERNAL int portable_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                              uint32_t *hit);

#if VC_HAVE_X86
/* kernel_shani.c: SHA-NI + SSE4.1/SSSE3; call only if vc_sha_ni_available(). */
VC_INTERNAL int shani_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                           uint32_t *hit);
/* kernel_avx512.c: AVX-512F/VL; call only if the CPU has both. */
VC_INTERNAL int avx512_scan(const struct segment *g, uint32_t lo, uint32_t n, uint64_t mask,
                            uint32_t *hit);
#endif

#endif
