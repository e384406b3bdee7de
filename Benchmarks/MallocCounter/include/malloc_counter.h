/* Counts allocations per thread by interposing the malloc family. Linked
 * into uvrpc-bench only: its definitions of malloc & co. replace glibc's for
 * the whole process and forward to glibc's own (__libc_malloc, ...). */
#ifndef UVRPC_MALLOC_COUNTER_H
#define UVRPC_MALLOC_COUNTER_H

/* Allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc) made so far by the calling thread. */
unsigned long long uvrpc_thread_allocations(void);

/* Allocations made so far by all threads. */
unsigned long long uvrpc_total_allocations(void);


/// Counts OpenSSL's allocations apart (its memory hooks); call before any
/// OpenSSL use. Returns 1 when the hooks took.
int uvrpc_count_openssl_allocations(void);
/// OpenSSL's allocations made on the calling thread so far (also in uvrpc_thread_allocations).
unsigned long long uvrpc_thread_openssl_allocations(void);
#endif
