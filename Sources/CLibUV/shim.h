// The C face of libuv for Swift. Only static-inline helpers for what Swift
// cannot reach directly (macros, casts between handle "subclasses").
#ifndef UVRPC_CLIBUV_SHIM_H
#define UVRPC_CLIBUV_SHIM_H

#include <uv.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/prctl.h>

/// Byte size of a sockaddr_storage, for Swift callers that allocate one.
static inline size_t uvrpc_sockaddr_storage_size(void) { return sizeof(struct sockaddr_storage); }

/// Names the calling thread (at most 15 bytes are kept), for debuggers and `top -H`.
static inline void uvrpc_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

#endif
