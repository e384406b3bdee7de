/*
 * uvrpc-c: a plain, reasonably optimised C libuv implementation of the
 * efro.rpc protocol (version 2), the baseline every uvrpc-bench figure is
 * measured against.
 *
 *   uvrpc-c serve [--host H] [--port P] [--loops N] [--cpu N]
 *       Echo server. Prints "listening on H:P" first. Runs N libuv loops,
 *       one thread each ("uvrpc-c-I"), each with its own SO_REUSEPORT
 *       listener on the same port (one plain listener when N is 1). On
 *       SIGUSR1 prints "connections per loop: A B ..."; exits 0 on SIGINT or
 *       SIGTERM. Each connection reads
 *       into one buffer (64 KiB, grown only for a larger frame), parses every
 *       complete frame, appends the responses to one output buffer, and
 *       writes them with one uv_try_write (uv_write for the rest) per read.
 *       Sends a KEEPALIVE every 10.73 s per connection, as the reference.
 *   uvrpc-c load --connect H:P [--connections N] [--concurrency C]
 *                [--size BYTES] [--duration S] [--latency] [--hold] [--cpu N]
 *       Load generator. Keeps C calls in flight on each of N connections for
 *       S seconds (after a 0.2 s warm-up that starts once all are connected), checks each response's length,
 *       and prints one JSON line: calls, seconds, calls_per_s, mb_per_s,
 *       total_calls (warm-up included), cpu_s (its own CPU while measuring) and, with --latency, p50_us / p99_us /
 *       p999_us. With --hold it then keeps its connections open until stdin
 *       closes. Past 2 000 connections to a 127.x address, connection i is
 *       bound to source address 127.0.0.(2 + i / 2000): the kernel's search
 *       for a free ephemeral port of one source address slows down as its
 *       ports fill (at 19 000 connections it took half the setup's time),
 *       and one address has only about 28 000 of them.
 *   uvrpc-c idle --connect H:P --connections N [--cpu N]
 *       Opens N connections, waits for every server handshake, prints
 *       "ready", then holds them until stdin closes.
 *
 * Exit status: 0 on success, 1 on a protocol or I/O error, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define KEEPALIVE_MS 10730

/* The load generator's loop (the server has one per thread). */
static uv_loop_t *loop;

/* TLS (--tls-cert/--tls-key to serve, --tls-ca to connect): one SSL_CTX; each
 * connection an SSL over two memory BIOs, driven from the same callbacks as
 * plaintext, as UVRPC does. NULL: plaintext. */
static SSL_CTX *tls_ctx;
static int tls_is_server;

static void die(const char *what, int rc) {
    fprintf(stderr, "uvrpc-c: %s: %s\n", what, rc ? uv_strerror(rc) : "failed");
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin_cpu(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) perror("uvrpc-c: sched_setaffinity");
}

/* Raises the open-files limit to 65536 or `needed` (the hard limit too, where
 * allowed), else as far as the hard limit; says so when that is below `needed`. */
static void raise_fd_limit(rlim_t needed) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t wanted = needed > 65536 ? needed : 65536;
    if (rl.rlim_cur >= wanted) return;
    struct rlimit up = { wanted, wanted > rl.rlim_max ? wanted : rl.rlim_max };
    if (setrlimit(RLIMIT_NOFILE, &up) == 0) return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < needed)
        fprintf(stderr, "uvrpc-c: the open-files hard limit is %llu, below the %llu needed\n",
                (unsigned long long)rl.rlim_max, (unsigned long long)needed);
}

/* ---- growable byte buffer ---- */
typedef struct { char *data; size_t len, cap; } buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) die("out of memory", 0);
    b->cap = cap;
}

static void put16(char *p, uint16_t v) { p[0] = (char)(v >> 8); p[1] = (char)v; }
static void put32(char *p, uint32_t v) { p[0] = (char)(v >> 24); p[1] = (char)(v >> 16); p[2] = (char)(v >> 8); p[3] = (char)v; }
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Appends a MESSAGE/RESPONSE frame (short form up to 65535, *_BIG above). */
static void put_frame(buf_t *out, int response, uint16_t id, const char *payload, size_t n) {
    buf_reserve(out, n + 7);
    char *p = out->data + out->len;
    if (n > 65535) {
        p[0] = response ? 5 : 4; put16(p + 1, id); put32(p + 3, (uint32_t)n); p += 7; out->len += 7;
    } else {
        p[0] = response ? 3 : 2; put16(p + 1, id); put16(p + 3, (uint16_t)n); p += 5; out->len += 5;
    }
    memcpy(p, payload, n);
    out->len += n;
}

static void put_handshake(buf_t *out) {
    static const char json[] = "{\"p\":2,\"k\":10.73}";
    size_t n = sizeof json - 1;
    buf_reserve(out, 4 + n);
    put32(out->data + out->len, (uint32_t)n);
    memcpy(out->data + out->len + 4, json, n);
    out->len += 4 + n;
}

/* ---- connection shared by server and client ---- */
typedef struct conn conn_t;
typedef void (*frame_cb)(conn_t *c, int type, uint16_t id, const char *payload, size_t n);

struct conn {
    uv_tcp_t tcp;
    uv_timer_t keepalive;
    buf_t in;              /* unparsed bytes start at in.data + in_off */
    size_t in_off;
    buf_t out;             /* frames produced while handling one read */
    buf_t sending;         /* what the socket did not take, handed to uv_write */
    uv_write_t write_req;  /* at most one uv_write in flight */
    int writing;
    int handshaken;        /* the peer's handshake was read */
    frame_cb on_frame;
    int closing;
    int server_loop;       /* the serving loop's index, or -1 (client) */
    /* client state */
    int concurrency;
    size_t size;
    uint64_t *sent_at;     /* by id, client only */
    uint16_t next_id;
    int in_flight;
    /* TLS */
    SSL *ssl;              /* owns rbio and wbio */
    BIO *rbio, *wbio;
    int tls_ready;         /* handshake done */
    buf_t cout;            /* ciphertext waiting for the socket */
};

/* Ciphertext lands here and goes straight into the connection's read BIO. */
static __thread char cipher_in[65536];

static void flush(conn_t *c);

static void on_write(uv_write_t *req, int status) {
    conn_t *c = req->data;
    c->writing = 0;
    c->sending.len = 0;
    if (status == 0) flush(c); /* what accumulated meanwhile */
}

/* TLS: encrypts `out` (once the handshake is done) and moves the ciphertext to `cout`. */
static void tls_encrypt(conn_t *c) {
    if (c->tls_ready && c->out.len) {
        size_t off = 0;
        while (off < c->out.len) {
            int n = SSL_write(c->ssl, c->out.data + off, (int)(c->out.len - off));
            if (n <= 0) { c->out.len = 0; return; }
            off += (size_t)n;
        }
        c->out.len = 0;
    }
    size_t pending;
    while ((pending = BIO_ctrl_pending(c->wbio)) > 0) {
        buf_reserve(&c->cout, pending);
        int n = BIO_read(c->wbio, c->cout.data + c->cout.len, (int)pending);
        if (n <= 0) break;
        c->cout.len += (size_t)n;
    }
}

/* Writes `c->out` (with TLS, its ciphertext in `c->cout`): uv_try_write first;
 * what the socket did not take goes to uv_write from the buffer itself, which
 * is swapped with a spare one (no copy, no allocation per write; frames
 * produced meanwhile wait in `out`). */
static void flush(conn_t *c) {
    if (c->closing || c->writing) return;
    buf_t *src = &c->out;
    if (c->ssl) { tls_encrypt(c); src = &c->cout; }
    if (src->len == 0) return;
    uv_buf_t b = uv_buf_init(src->data, (unsigned)src->len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n < 0 && n != UV_EAGAIN) { src->len = 0; return; }
    if (n < 0) n = 0;
    size_t rest = src->len - (size_t)n;
    if (rest > 0) {
        buf_t t = c->sending; c->sending = *src; *src = t;
        src->len = 0;
        uv_buf_t wb = uv_buf_init(c->sending.data + n, (unsigned)rest);
        c->write_req.data = c;
        if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &wb, 1, on_write) == 0) c->writing = 1;
        else c->sending.len = 0;
        return;
    }
    src->len = 0;
}

static unsigned long open_per_loop[256]; /* server connections open, per loop (atomic) */

static void on_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    if (h == (uv_handle_t *)&c->tcp) {
        if (c->server_loop >= 0) __atomic_fetch_sub(&open_per_loop[c->server_loop], 1, __ATOMIC_RELAXED);
        if (c->ssl) SSL_free(c->ssl);
        free(c->in.data); free(c->out.data); free(c->sending.data); free(c->cout.data); free(c->sent_at); free(c);
    }
}

static void on_keepalive_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void conn_close(conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    uv_timer_stop(&c->keepalive);
    uv_close((uv_handle_t *)&c->keepalive, on_keepalive_closed);
}

static void on_keepalive(uv_timer_t *t) {
    conn_t *c = t->data;
    buf_reserve(&c->out, 1);
    c->out.data[c->out.len++] = 1;
    flush(c);
}

/* Room at the end of the input buffer for the next bytes. */
static void in_space(conn_t *c) {
    /* Move the unparsed tail to the front when the free space runs short. */
    if (c->in_off > 0 && c->in.cap - c->in.len < 16384) {
        memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in_off = 0;
    }
    buf_reserve(&c->in, 16384);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)suggested;
    conn_t *c = h->data;
    if (c->ssl) { b->base = cipher_in; b->len = sizeof cipher_in; return; }
    in_space(c);
    b->base = c->in.data + c->in.len;
    b->len = c->in.cap - c->in.len;
}

/* Parses every complete unit in the input buffer. Returns -1 on a protocol error. */
static int parse(conn_t *c) {
    const unsigned char *p = (const unsigned char *)c->in.data;
    size_t off = c->in_off, end = c->in.len;
    while (off < end) {
        size_t avail = end - off;
        if (!c->handshaken) {
            if (avail < 4) break;
            uint32_t n = get32(p + off);
            if (n > 65536) return -1;
            if (avail < 4 + (size_t)n) break;
            off += 4 + n;
            c->handshaken = 1;
            continue;
        }
        int type = p[off];
        if (type == 1) { off += 1; continue; }
        if (type < 2 || type > 5) return -1;
        size_t header = type >= 4 ? 7 : 5;
        if (avail < header) break;
        uint16_t id = get16(p + off + 1);
        size_t n = type >= 4 ? get32(p + off + 3) : get16(p + off + 3);
        if (n > (64u << 20)) return -1;
        if (avail < header + n) {
            /* Make room for the whole frame once. */
            if (c->in.cap - off < header + n) {
                memmove(c->in.data, c->in.data + off, avail);
                c->in.len = avail;
                c->in_off = 0;
                buf_reserve(&c->in, header + n - avail + 16384);
                return 0;
            }
            break;
        }
        c->on_frame(c, type, id, (const char *)p + off + header, n);
        off += header + n;
    }
    if (off == end) { c->in.len = 0; c->in_off = 0; } else { c->in_off = off; }
    return 0;
}

/* TLS: the ciphertext just read into OpenSSL, then the handshake or the
 * plaintext decrypted into the input buffer, parsed as it comes. */
static void tls_read(conn_t *c, size_t nread) {
    BIO_write(c->rbio, cipher_in, (int)nread);
    if (!c->tls_ready) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                fprintf(stderr, "uvrpc-c: TLS handshake failed: %s\n", ERR_reason_error_string(ERR_get_error()));
                ERR_clear_error();
                conn_close(c);
                return;
            }
            flush(c);
            return;
        }
        c->tls_ready = 1;
    }
    for (;;) {
        in_space(c);
        int n = SSL_read(c->ssl, c->in.data + c->in.len, (int)(c->in.cap - c->in.len));
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e != SSL_ERROR_WANT_READ) conn_close(c);
            break;
        }
        c->in.len += (size_t)n;
        if (parse(c) < 0) { fprintf(stderr, "uvrpc-c: protocol error; closing\n"); conn_close(c); return; }
    }
    flush(c);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    conn_t *c = s->data;
    if (nread < 0) { conn_close(c); return; }
    if (c->ssl) { tls_read(c, (size_t)nread); return; }
    c->in.len += (size_t)nread;
    if (parse(c) < 0) { fprintf(stderr, "uvrpc-c: protocol error; closing\n"); conn_close(c); return; }
    flush(c);
}

/* A connection on loop `l`; with `bound_source` its socket exists at once (for a bind before connect). */
static conn_t *conn_new(uv_loop_t *l, frame_cb on_frame, int bound_source) {
    conn_t *c = calloc(1, sizeof *c);
    if (!c) die("out of memory", 0);
    if (bound_source) uv_tcp_init_ex(l, &c->tcp, AF_INET); else uv_tcp_init(l, &c->tcp);
    uv_timer_init(l, &c->keepalive);
    c->tcp.data = c;
    c->keepalive.data = c;
    c->on_frame = on_frame;
    c->server_loop = -1;
    if (tls_ctx) {
        c->ssl = SSL_new(tls_ctx);
        c->rbio = BIO_new(BIO_s_mem());
        c->wbio = BIO_new(BIO_s_mem());
        if (!c->ssl || !c->rbio || !c->wbio) die("TLS: SSL_new", 0);
        SSL_set_bio(c->ssl, c->rbio, c->wbio);
        if (tls_is_server) SSL_set_accept_state(c->ssl); else SSL_set_connect_state(c->ssl);
    }
    return c;
}

static void conn_start(conn_t *c, uv_read_cb on_read) {
    uv_tcp_nodelay(&c->tcp, 1);
    put_handshake(&c->out);
    if (c->ssl && !tls_is_server) SSL_do_handshake(c->ssl); /* the ClientHello */
    flush(c);
    uv_timer_start(&c->keepalive, on_keepalive, KEEPALIVE_MS, KEEPALIVE_MS);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

/* ---- server ---- */
static void server_frame(conn_t *c, int type, uint16_t id, const char *payload, size_t n) {
    if (type == 2 || type == 4) put_frame(&c->out, 1, id, payload, n);
}

/* One serving loop: its thread, its libuv loop, its listener. */
typedef struct {
    uv_loop_t loop;
    uv_tcp_t server;
    int index;
    pthread_t thread;
} serve_loop_t;

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) return;
    serve_loop_t *s = server->data;
    conn_t *c = conn_new(server->loop, server_frame, 0);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) { conn_close(c); return; }
    c->server_loop = s->index;
    __atomic_fetch_add(&open_per_loop[s->index], 1, __ATOMIC_RELAXED);
    conn_start(c, read_cb);
}

static void *serve_thread(void *arg) {
    serve_loop_t *s = arg;
    char name[16];
    snprintf(name, sizeof name, "uvrpc-c-%d", s->index);
    pthread_setname_np(pthread_self(), name);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Binds loop `s`'s listener to host:port (SO_REUSEPORT when `reuse`); returns the bound port. */
static int serve_listen(serve_loop_t *s, const char *host, int port, int reuse) {
    struct sockaddr_in addr;
    int rc = uv_ip4_addr(host, port, &addr);
    if (rc) die("address", rc);
    uv_tcp_init_ex(&s->loop, &s->server, AF_INET);
    s->server.data = s;
    if (reuse) {
        uv_os_fd_t fd;
        int on = 1;
        uv_fileno((uv_handle_t *)&s->server, &fd);
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) die("setsockopt(SO_REUSEPORT)", -errno);
    }
    if ((rc = uv_tcp_bind(&s->server, (const struct sockaddr *)&addr, 0))) die("bind", rc);
    if ((rc = uv_listen((uv_stream_t *)&s->server, 4096, on_connection))) die("listen", rc);
    struct sockaddr_in bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&s->server, (struct sockaddr *)&bound, &len);
    return ntohs(bound.sin_port);
}

/* serve: N loops on N threads; the main thread waits for signals. */
static int serve(const char *host, int port, int nloops) {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &signals, NULL); /* the loop threads inherit the mask */
    serve_loop_t *loops = calloc((size_t)nloops, sizeof *loops);
    for (int i = 0; i < nloops; i++) {
        loops[i].index = i;
        uv_loop_init(&loops[i].loop);
        port = serve_listen(&loops[i], host, port, nloops > 1);
    }
    printf("listening on %s:%d\n", host, port);
    fflush(stdout);
    for (int i = 0; i < nloops; i++) pthread_create(&loops[i].thread, NULL, serve_thread, &loops[i]);
    for (;;) {
        int signum = 0;
        sigwait(&signals, &signum);
        if (signum != SIGUSR1) return 0; /* the process ends; the kernel closes every socket */
        printf("connections per loop:");
        for (int i = 0; i < nloops; i++) printf(" %lu", __atomic_load_n(&open_per_loop[i], __ATOMIC_RELAXED));
        printf("\n");
        fflush(stdout);
    }
}

/* ---- client ---- */
static uint64_t total_calls, measured_calls, measure_start_ns, measure_end_ns;
static int measuring, record_latency, ready_count, target_conns;
static uint64_t *latencies;
static conn_t **conns;
static int nconns;
static size_t latencies_len, latencies_cap;
static char *payload_bytes;

static void client_send(conn_t *c) {
    uint16_t id = c->next_id++;
    if (c->sent_at) c->sent_at[id] = now_ns();
    put_frame(&c->out, 0, id, payload_bytes, c->size);
    c->in_flight++;
}

static void client_frame(conn_t *c, int type, uint16_t id, const char *payload, size_t n) {
    (void)payload;
    if (type != 3 && type != 5) return;
    if (n != c->size) { fprintf(stderr, "uvrpc-c: response %u has %zu bytes, expected %zu\n", id, n, c->size); exit(1); }
    c->in_flight--;
    total_calls++;
    if (measuring) {
        measured_calls++;
        if (record_latency) {
            if (latencies_len == latencies_cap) {
                latencies_cap = latencies_cap ? latencies_cap * 2 : 1 << 20;
                latencies = realloc(latencies, latencies_cap * sizeof *latencies);
            }
            latencies[latencies_len++] = now_ns() - c->sent_at[id];
        }
    }
    if (!c->closing) client_send(c);
}

static void idle_frame(conn_t *c, int type, uint16_t id, const char *payload, size_t n) {
    (void)c; (void)type; (void)id; (void)payload; (void)n;
}

static struct sockaddr_in target_addr;
static int next_to_connect, connecting, spread_sources;

static void on_connect(uv_connect_t *req, int status);
static uv_timer_t phase_timer;
static void on_phase(uv_timer_t *t);
static void connect_more(void);

/* A client connection counts as connecting until the server's handshake
 * arrives (the server accepted it), and at most 256 connect at once: more
 * would overflow a busy server's accept queue, and the dropped SYNs would
 * come back only after the kernel's 1, 3, 7 ... second retransmits. Once
 * every connection is up, idle mode prints "ready" and load mode starts its
 * calls and its 200 ms warm-up: setting up thousands of connections is not
 * slowed down by calls on the ones already up, nor falls into the measured
 * window. */
static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn_t *c = s->data;
    int was = c->handshaken;
    read_cb(s, nread, b);
    if (nread <= 0 || was || !c->handshaken) return;
    connecting--;
    connect_more();
    if (++ready_count < target_conns) return;
    if (c->on_frame == idle_frame) {
        printf("ready\n");
        fflush(stdout);
    } else {
        for (int i = 0; i < nconns; i++) {
            conn_t *each = conns[i];
            for (int k = 0; k < each->concurrency; k++) client_send(each);
            flush(each);
        }
        uv_timer_start(&phase_timer, on_phase, 200, 0);
    }
}

/* Starts connects until 256 are outstanding (see client_read_cb). */
static void connect_more(void) {
    while (next_to_connect < nconns && connecting < 256) {
        int index = next_to_connect++;
        conn_t *c = conns[index];
        if (spread_sources) {
            /* 127.0.0.(2 + i / 2000), the port chosen at connect (IP_BIND_ADDRESS_NO_PORT). */
            struct sockaddr_in source;
            char ip[32];
            snprintf(ip, sizeof ip, "127.0.0.%d", 2 + index / 2000);
            uv_ip4_addr(ip, 0, &source);
            uv_os_fd_t fd;
            int on = 1;
            uv_fileno((uv_handle_t *)&c->tcp, &fd);
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
            int rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&source, 0);
            if (rc) die("bind to a source address", rc);
        }
        uv_connect_t *req = malloc(sizeof *req);
        req->data = c;
        int rc = uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&target_addr, on_connect);
        if (rc) die("connect", rc);
        connecting++;
    }
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    free(req);
    if (status < 0) die("connect", status);
    conn_start(c, client_read_cb);
}

/* ---- churn: a fresh connection per call (handshakes per second) ---- */
static uint64_t churned;
static int churn_stopping;
static void churn_start(void);

static void churn_frame(conn_t *c, int type, uint16_t id, const char *payload, size_t n) {
    (void)id; (void)payload; (void)n;
    if (type != 3 && type != 5) return;
    if (measuring) churned++;
    /* Close with a reset: no TIME_WAIT left behind per connection. */
    uv_os_fd_t fd;
    struct linger off = { 1, 0 };
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
    conn_close(c);
    if (!churn_stopping) churn_start();
}

static void churn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn_t *c = s->data;
    int was = c->handshaken;
    read_cb(s, nread, b);
    if (nread > 0 && !was && c->handshaken && !c->closing) { client_send(c); flush(c); }
}

static void on_churn_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    free(req);
    if (status < 0) die("connect", status);
    conn_start(c, churn_read_cb);
}

static void churn_start(void) {
    conn_t *c = conn_new(loop, churn_frame, 0);
    c->size = 64;
    c->next_id = 65530;
    uv_connect_t *req = malloc(sizeof *req);
    req->data = c;
    int rc = uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&target_addr, on_churn_connect);
    if (rc) die("connect", rc);
}

/* TLS setup: a server context with a certificate, or a client one trusting `ca`. */
static void tls_setup(const char *cert, const char *key, const char *ca) {
    if (!cert && !ca) return;
    tls_is_server = cert != NULL;
    tls_ctx = SSL_CTX_new(cert ? TLS_server_method() : TLS_client_method());
    if (!tls_ctx) die("TLS: SSL_CTX_new", 0);
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_RENEGOTIATION);
    if (cert) {
        if (!key || SSL_CTX_use_certificate_chain_file(tls_ctx, cert) != 1
            || SSL_CTX_use_PrivateKey_file(tls_ctx, key, SSL_FILETYPE_PEM) != 1) die("TLS: loading --tls-cert / --tls-key", 0);
    } else {
        if (SSL_CTX_load_verify_locations(tls_ctx, ca, NULL) != 1) die("TLS: loading --tls-ca", 0);
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    }
}

static char stdin_buf[256];

static void alloc_cb_stdin(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)h; (void)suggested;
    b->base = stdin_buf;
    b->len = sizeof stdin_buf;
}

static void read_cb_stdin(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)s; (void)b;
    if (nread < 0) exit(0); /* stdin closed: the bench is done with us */
}

static int phase;
static double duration_s = 1.0;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(double q) {
    if (latencies_len == 0) return 0;
    size_t i = (size_t)(q * (double)(latencies_len - 1) + 0.5);
    return (double)latencies[i] / 1000.0;
}

static int churn_mode;

/* CPU seconds (user + system) this process used so far. */
static double process_cpu_s(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6
         + (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}
static double measure_start_cpu_s, measure_end_cpu_s;

static void on_phase(uv_timer_t *t) {
    if (phase == 0) { /* warm-up over: start measuring */
        measuring = 1;
        measure_start_ns = now_ns();
        measure_start_cpu_s = process_cpu_s();
        phase = 1;
        uv_timer_start(t, on_phase, (uint64_t)(duration_s * 1000), 0);
        return;
    }
    measuring = 0;
    measure_end_ns = now_ns();
    measure_end_cpu_s = process_cpu_s();
    churn_stopping = 1;
    uv_stop(loop);
}

static int hold_after;

static int parse_hostport(const char *s, char *host, size_t hostlen, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostlen) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static void usage(void) {
    fprintf(stderr, "usage: uvrpc-c serve [--host H] [--port P] [--loops N] [--cpu N] [--tls-cert F --tls-key F]\n"
                    "       uvrpc-c load --connect H:P [--connections N] [--concurrency C] [--size B] [--duration S] [--latency] [--hold] [--cpu N] [--tls-ca F]\n"
                    "       uvrpc-c idle --connect H:P --connections N [--cpu N] [--tls-ca F]\n"
                    "       uvrpc-c churn --connect H:P [--connections N] [--duration S] [--cpu N] [--tls-ca F]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    const char *host = "127.0.0.1", *connect_to = NULL, *tls_cert = NULL, *tls_key = NULL, *tls_ca = NULL;
    int port = 0, cpu = -1, connections = 1, concurrency = 1, nloops = 1;
    size_t size = 64;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--latency")) { record_latency = 1; continue; }
        if (!strcmp(a, "--hold")) { hold_after = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--cpu")) cpu = atoi(v);
        else if (!strcmp(a, "--connect")) connect_to = v;
        else if (!strcmp(a, "--connections")) connections = atoi(v);
        else if (!strcmp(a, "--loops")) nloops = atoi(v);
        else if (!strcmp(a, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(a, "--size")) size = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration")) duration_s = atof(v);
        else if (!strcmp(a, "--tls-cert")) tls_cert = v;
        else if (!strcmp(a, "--tls-key")) tls_key = v;
        else if (!strcmp(a, "--tls-ca")) tls_ca = v;
        else usage();
        i++;
    }
    pin_cpu(cpu);
    raise_fd_limit(!strcmp(mode, "serve") ? 0 : (rlim_t)connections + 64);
    signal(SIGPIPE, SIG_IGN); /* a peer that went away must be EPIPE, not death (UVRPC does the same) */
    tls_setup(!strcmp(mode, "serve") ? tls_cert : NULL, tls_key, !strcmp(mode, "serve") ? NULL : tls_ca);

    if (!strcmp(mode, "serve")) {
        if (nloops < 1 || nloops > 256) usage();
        return serve(host, port, nloops);
    }
    loop = uv_default_loop();

    if (strcmp(mode, "load") && strcmp(mode, "idle") && strcmp(mode, "churn")) usage();
    char target_host[256];
    int target_port;
    if (!connect_to || parse_hostport(connect_to, target_host, sizeof target_host, &target_port)) usage();
    int rc = uv_ip4_addr(target_host, target_port, &target_addr);
    if (rc) die("address", rc);
    int idle = !strcmp(mode, "idle");
    churn_mode = !strcmp(mode, "churn");
    if (churn_mode) size = 64;
    payload_bytes = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++) payload_bytes[i] = (char)(i * 31 + 7);
    if (churn_mode) {
        /* --connections lanes, each a fresh connection (TCP, TLS and efro.rpc handshakes) per call. */
        uv_timer_init(loop, &phase_timer);
        for (int i = 0; i < connections; i++) churn_start();
        uv_timer_start(&phase_timer, on_phase, 200, 0);
        uv_run(loop, UV_RUN_DEFAULT);
        double seconds = (double)(measure_end_ns - measure_start_ns) / 1e9;
        printf("{\"handshakes\":%llu,\"seconds\":%.6f,\"handshakes_per_s\":%.1f}\n",
               (unsigned long long)churned, seconds, (double)churned / seconds);
        fflush(stdout);
        return 0;
    }
    conns = calloc((size_t)connections, sizeof *conns);
    nconns = connections;
    target_conns = connections;
    spread_sources = connections > 2000 && !strncmp(target_host, "127.", 4);
    for (int i = 0; i < connections; i++) {
        conn_t *c = conn_new(loop, idle ? idle_frame : client_frame, spread_sources);
        c->concurrency = concurrency;
        c->size = size;
        c->next_id = 65530;
        if (!idle) c->sent_at = calloc(65536, sizeof *c->sent_at);
        conns[i] = c;
    }
    uv_timer_init(loop, &phase_timer);
    connect_more();
    if (idle) {
        /* Hold until stdin closes (the bench reads the server's memory meanwhile). */
        uv_pipe_t in;
        uv_pipe_init(loop, &in, 0);
        uv_pipe_open(&in, 0);
        uv_read_start((uv_stream_t *)&in, alloc_cb_stdin, read_cb_stdin);
        uv_run(loop, UV_RUN_DEFAULT);
        return 0;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    double seconds = (double)(measure_end_ns - measure_start_ns) / 1e9;
    if (record_latency && latencies_len) qsort(latencies, latencies_len, sizeof *latencies, cmp_u64);
    printf("{\"calls\":%llu,\"seconds\":%.6f,\"calls_per_s\":%.1f,\"mb_per_s\":%.3f,\"total_calls\":%llu,\"cpu_s\":%.4f",
           (unsigned long long)measured_calls, seconds, (double)measured_calls / seconds,
           (double)measured_calls * (double)size / seconds / 1e6, (unsigned long long)total_calls,
           measure_end_cpu_s - measure_start_cpu_s);
    if (record_latency)
        printf(",\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f", percentile_us(0.50), percentile_us(0.99), percentile_us(0.999));
    printf("}\n");
    fflush(stdout);
    if (hold_after) { /* keep the connections until stdin closes (the bench reads the server meanwhile) */
        char byte;
        while (read(0, &byte, 1) > 0) {}
    }
    return 0;
}
