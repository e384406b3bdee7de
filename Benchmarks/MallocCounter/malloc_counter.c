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
