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

#endif
