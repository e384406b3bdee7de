// The OpenSSL calls UVLoop's TLS transport uses, and small wrappers for what
// Swift cannot call directly (macros, and a few multi-step PEM and name helpers).
#ifndef UVRPC_OPENSSL_SHIM_H
#define UVRPC_OPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

/// TLS 1.2 at least (a macro in OpenSSL). Returns 1 on success.
static inline int uvrpc_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

/// No renegotiation (TLS 1.2's, a denial-of-service lever). Buffers are kept
/// between records (SSL_MODE_RELEASE_BUFFERS would free and allocate them per record).
static inline void uvrpc_ssl_ctx_set_modes(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
}

/// Uses the PEM certificate chain in memory (leaf first). Returns 1 on success.
static inline int uvrpc_ssl_ctx_use_chain_pem(SSL_CTX *ctx, const char *pem, int length) {
    BIO *bio = BIO_new_mem_buf(pem, length);
    if (!bio) return 0;
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
    int ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    if (ok) {
        SSL_CTX_clear_chain_certs(ctx);
        X509 *extra;
        while ((extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) { X509_free(extra); ok = 0; break; }
        }
        ERR_clear_error(); // the end of the PEM text reads as an error
    }
    BIO_free(bio);
    return ok;
}

/// Uses the PEM private key in memory. Returns 1 on success.
static inline int uvrpc_ssl_ctx_use_key_pem(SSL_CTX *ctx, const char *pem, int length) {
    BIO *bio = BIO_new_mem_buf(pem, length);
    if (!bio) return 0;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    int ok = key && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

/// Trusts every certificate of the PEM text in memory. Returns how many were added (0: none or an error).
static inline int uvrpc_ssl_ctx_trust_pem(SSL_CTX *ctx, const char *pem, int length) {
    BIO *bio = BIO_new_mem_buf(pem, length);
    if (!bio) return 0;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int added = 0;
    X509 *cert;
    while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (X509_STORE_add_cert(store, cert) == 1) added += 1;
        X509_free(cert);
    }
    ERR_clear_error();
    BIO_free(bio);
    return added;
}

/// The server's list of acceptable client CAs (sent in its certificate
/// request) from the PEM text in memory. Returns 1 on success.
static inline int uvrpc_ssl_ctx_set_client_ca_pem(SSL_CTX *ctx, const char *pem, int length) {
    BIO *bio = BIO_new_mem_buf(pem, length);
    if (!bio) return 0;
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
    X509 *cert;
    while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        X509_NAME *name = X509_NAME_dup(X509_get_subject_name(cert));
        if (name) sk_X509_NAME_push(names, name);
        X509_free(cert);
    }
    ERR_clear_error();
    BIO_free(bio);
    SSL_CTX_set_client_CA_list(ctx, names);
    return 1;
}

/// Sets the name the server's certificate must carry and, for a DNS name,
/// the SNI extension. `is_ip` selects an IP address check. Returns 1 on success.
static inline int uvrpc_ssl_set_peer_name(SSL *ssl, const char *name, int is_ip) {
    if (is_ip) return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
    if (SSL_set_tlsext_host_name(ssl, name) != 1) return 0;
    return SSL_set1_host(ssl, name);
}

/// Bytes waiting in a memory BIO (a macro in OpenSSL).
static inline size_t uvrpc_bio_pending(BIO *bio) { return BIO_ctrl_pending(bio); }

/// True once the peer's close_notify arrived.
static inline int uvrpc_ssl_received_shutdown(const SSL *ssl) {
    return (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) != 0;
}

/// The peer certificate's subject as an RFC 2253 string into `buffer`
/// (NUL-terminated, truncated to `size`); returns its length, or -1 when there is no peer certificate.
static inline int uvrpc_ssl_peer_subject(SSL *ssl, char *buffer, int size) {
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert) return -1;
    BIO *bio = BIO_new(BIO_s_mem());
    int n = -1;
    if (bio) {
        X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
        n = BIO_read(bio, buffer, size - 1);
        if (n < 0) n = 0;
        buffer[n] = 0;
        BIO_free(bio);
    }
    X509_free(cert);
    return n;
}

/// The first queued OpenSSL error as text (and clears the queue); empty when none.
static inline void uvrpc_ssl_error_text(char *buffer, size_t size) {
    unsigned long code = ERR_get_error();
    buffer[0] = 0;
    if (code) ERR_error_string_n(code, buffer, size);
    ERR_clear_error();
}

#endif
