#include "malloc_counter.h"
#include <stddef.h>
#include <stdatomic.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern void __libc_free(void *);

static __thread unsigned long long thread_count;
static atomic_ullong total_count;

static inline void count(void) {
    thread_count++;
    atomic_fetch_add_explicit(&total_count, 1, memory_order_relaxed);
}

void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t alignment, size_t n) { count(); return __libc_memalign(alignment, n); }
void *aligned_alloc(size_t alignment, size_t n) { count(); return __libc_memalign(alignment, n); }
void *valloc(size_t n) { count(); return __libc_valloc(n); }
void *pvalloc(size_t n) { count(); return __libc_pvalloc(n); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    count();
    void *p = __libc_memalign(alignment, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

unsigned long long uvrpc_thread_allocations(void) { return thread_count; }
unsigned long long uvrpc_total_allocations(void) { return atomic_load_explicit(&total_count, memory_order_relaxed); }

/* OpenSSL's own allocations, counted apart (per thread) through its memory
 * hooks, so that UVRPC's share of a TLS round trip can be told from OpenSSL's. */
#include <openssl/crypto.h>

static __thread unsigned long long openssl_count;

static void *openssl_malloc(size_t n, const char *file, int line) {
    (void)file; (void)line;
    openssl_count++;
    return malloc(n);
}

static void *openssl_realloc(void *p, size_t n, const char *file, int line) {
    (void)file; (void)line;
    openssl_count++;
    return realloc(p, n);
}

static void openssl_free(void *p, const char *file, int line) {
    (void)file; (void)line;
    free(p);
}

int uvrpc_count_openssl_allocations(void) {
    return CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free);
}

unsigned long long uvrpc_thread_openssl_allocations(void) { return openssl_count; }
