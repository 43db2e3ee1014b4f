/* Nonce search for votechain: hash = SHA-256(content[32] || nonce as 8 big-endian bytes).
 *
 * The search scans nonces in increasing order and reports the first whose
 * digest starts with `difficulty` zero hex digits. See kernel.h for the
 * block layout and the precomputations that make it fast, dispatch.c for
 * which kernel runs where, and kernel_*.c for the kernels.
 */
#ifndef VOTECHAIN_SHA256_SEARCH_H
#define VOTECHAIN_SHA256_SEARCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How many nonces are hashed between two reads of the abort flag. At the
 * ~60 M hashes/s measured for AVX-512 that is ~0.5 ms, at ~35 M hashes/s for
 * SHA-NI ~1 ms, and at ~9 M hashes/s
 * (portable C) ~4 ms (measured stop latencies: 1.1 ms and 4.3 ms), inside the
 * 10 ms target, while one byte load per 32768 hashes costs nothing. */
#define VC_CHECK_INTERVAL 32768u

/* Nonces kept in flight by the SHA-NI kernel (hides sha256rnds2 latency). */
#define VC_SHANI_STREAMS 4

#define VC_MAX_DIFFICULTY 16

enum vc_result {
    VC_EXHAUSTED = 0, /* no nonce in the range qualifies */
    VC_FOUND = 1,     /* *found holds the first qualifying nonce */
    VC_ABORTED = -1,  /* the abort flag was seen set */
    VC_BAD_ARGUMENT = -2
};

/* Which kernel vc_search uses. AUTO picks the fastest this CPU supports. */
enum vc_kernel {
    VC_KERNEL_AUTO = 0,
    VC_KERNEL_PORTABLE = 1,     /* plain C, any CPU */
    VC_KERNEL_SHANI_SSE = 2,    /* SHA-NI + SSE4.1 */
    /* 3 was SHA-NI + AVX-512VL, removed (see kernel_shani.c); now invalid.
     * The other values stay as they were. */
    VC_KERNEL_AVX512 = 4        /* AVX-512F/VL, 16 nonces per zmm, no SHA-NI */
};

/* Nonces hashed per pass by the AVX-512 kernel (one per 32-bit lane). */
#define VC_AVX512_LANES 16

/* Short name of the kernel vc_search runs for `kernel` (VC_KERNEL_AUTO gives
 * the one picked for this CPU): "avx512x16", "sha-ni", "portable";
 * "unknown" for an invalid value. Static string. */
const char *vc_kernel_name(int kernel);

/* 1 if this CPU has SHA-NI (plus the SSE4.1/SSSE3 the kernel also uses). */
int vc_sha_ni_available(void);

/* Scan nonces first..last INCLUSIVE (so the whole 2**64 range is expressible)
 * for the first one whose hash has `difficulty` (0..16) leading zero hex
 * digits. abort_flag may be NULL; otherwise *abort_flag is re-read every
 * VC_CHECK_INTERVAL nonces and a nonzero value ends the search. `kernel` is a
 * vc_kernel; asking for one this CPU lacks is VC_BAD_ARGUMENT. Safe to call
 * without the Python GIL: touches no Python state. */
int vc_search(const uint8_t content[32], unsigned difficulty, uint64_t first, uint64_t last,
              const volatile uint8_t *abort_flag, int kernel, uint64_t *found);

#ifdef __cplusplus
}
#endif

#endif
