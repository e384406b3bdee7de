// The C face of libuv for Swift. Only static-inline helpers for what Swift
// cannot reach directly (macros, casts between handle "subclasses").
#ifndef UVRPC_CLIBUV_SHIM_H
#define UVRPC_CLIBUV_SHIM_H

// No _GNU_SOURCE here: the system headers must read as they do for the
// other modules (Glibc, Dispatch), so GNU-only calls go through syscall(2).
#include <uv.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <sys/eventfd.h>

/// Byte size of a sockaddr_storage, for Swift callers that allocate one.
/* A non-blocking, close-on-exec eventfd (the loop's wakeup); -1 with errno on failure. */
static inline int uvrpc_wakeup_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

static inline size_t uvrpc_sockaddr_storage_size(void) { return sizeof(struct sockaddr_storage); }

/// Names the calling thread (at most 15 bytes are kept), for debuggers and `top -H`.
static inline void uvrpc_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

/// The calling thread's name into `buffer` (at least 16 bytes, NUL-terminated).
static inline void uvrpc_get_thread_name(char *buffer) { prctl(PR_GET_NAME, buffer, 0, 0, 0); }

/// An affinity mask of up to 1024 CPUs, as the kernel reads and writes it.
typedef struct { unsigned long bits[1024 / (8 * sizeof(unsigned long))]; } uvrpc_cpu_mask;

/// The calling thread's affinity mask; 0 or -1.
static inline int uvrpc_get_affinity(uvrpc_cpu_mask *mask) {
    memset(mask, 0, sizeof *mask);
    return syscall(SYS_sched_getaffinity, 0, sizeof *mask, mask) > 0 ? 0 : -1;
}

static inline int uvrpc_mask_has(const uvrpc_cpu_mask *mask, int cpu) {
    const int per = 8 * (int)sizeof(unsigned long);
    return (int)((mask->bits[cpu / per] >> (cpu % per)) & 1ul);
}

/// CPUs this process may run on (its affinity mask, as `taskset` or a
/// container's cpuset leaves it), at least 1.
static inline int uvrpc_available_cpus(void) {
    uvrpc_cpu_mask mask;
    if (uvrpc_get_affinity(&mask) != 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int)n : 1;
    }
    int n = 0;
    for (int cpu = 0; cpu < 1024; cpu++) n += uvrpc_mask_has(&mask, cpu);
    return n > 0 ? n : 1;
}

/// The `index`-th CPU (0-based) of this process's affinity mask, or -1.
static inline int uvrpc_nth_available_cpu(int index) {
    uvrpc_cpu_mask mask;
    if (uvrpc_get_affinity(&mask) != 0) return -1;
    for (int cpu = 0, seen = 0; cpu < 1024; cpu++) {
        if (uvrpc_mask_has(&mask, cpu) && seen++ == index) return cpu;
    }
    return -1;
}

/// Pins the calling thread to one CPU; 0 or an errno value.
static inline int uvrpc_pin_current_thread(int cpu) {
    if (cpu < 0 || cpu >= 1024) return EINVAL;
    uvrpc_cpu_mask mask;
    memset(&mask, 0, sizeof mask);
    const int per = 8 * (int)sizeof(unsigned long);
    mask.bits[cpu / per] = 1ul << (cpu % per);
    return syscall(SYS_sched_setaffinity, 0, sizeof mask, &mask) == 0 ? 0 : errno;
}

/// A non-blocking, close-on-exec listening socket bound to `addr` (an
/// AF_INET, AF_INET6 or AF_UNIX address of `length` bytes); TCP sockets get
/// SO_REUSEADDR as libuv gives them, and SO_REUSEPORT when `reuseport` is
/// set (one socket per loop on the same port). Returns the descriptor or -errno.
static inline int uvrpc_listen_socket(const struct sockaddr *addr, socklen_t length, int backlog, int reuseport) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int on = 1;
    if (addr->sa_family != AF_UNIX) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    if (bind(fd, addr, length) != 0 || listen(fd, backlog) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/// Fills `addr` with a Unix socket address for `path`; -ENAMETOOLONG when it does not fit.
static inline int uvrpc_unix_address(const char *path, struct sockaddr_un *addr, socklen_t *length) {
    size_t n = strlen(path);
    if (n >= sizeof addr->sun_path) return -ENAMETOOLONG;
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, n + 1);
    *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

/// Accepts one connection, non-blocking and close-on-exec; the descriptor or -errno.
static inline int uvrpc_accept(int fd) {
    long client = syscall(SYS_accept4, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return client >= 0 ? (int)client : -errno;
}

/// Whether `count` (at most 8) more descriptors can be opened right now:
/// opens that many on /dev/null and closes them again. 0, or -errno
/// (-EMFILE when the open-files limit is in the way).
static inline int uvrpc_probe_descriptors(int count) {
    int fds[8];
    int opened = 0, err = 0;
    if (count > 8) count = 8;
    for (; opened < count; opened++) {
        fds[opened] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fds[opened] < 0) { err = -errno; break; }
    }
    for (int i = 0; i < opened; i++) close(fds[i]);
    return err;
}

/// How many descriptors below `limit` (at most 65536 are looked at) are open now.
static inline int uvrpc_count_open_descriptors(int limit) {
    if (limit > 65536) limit = 65536;
    int n = 0;
    for (int fd = 0; fd < limit; fd++) n += fcntl(fd, F_GETFD) != -1;
    return n;
}

#endif
