/* The plain C libuv baseline of efro.rpc (server and load generator). */
#ifndef UVRPC_C_H
#define UVRPC_C_H
#endif
