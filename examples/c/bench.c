/*
 * Cost of one admission + release through the C ABI, one thread, 3 hosts with room:
 * by cluster name, through a resolved cluster handle, and on a fixed host by address.
 *
 *   cargo build -p wscap-ffi --release
 *   gcc -O2 -std=c11 -I include examples/c/bench.c target/release/libwscap_ffi.a \
 *       -lpthread -ldl -lm -o bench && ./bench [iterations]
 */
#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "wscap.h"

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int check(wscap_result r) {
    if (r != WSCAP_RESULT_OK) {
        fprintf(stderr, "bench: %s\n", wscap_result_str(r));
        exit(1);
    }
    return 0;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 3000000;
    if (n <= 0) {
        n = 1;
    }
    wscap_registry *reg = NULL;
    wscap_cluster *pods = NULL;
    wscap_permit *p = NULL;
    check(wscap_registry_new("{\"clusters\":[{\"name\":\"pods\",\"max_connections_per_host\":100,"
                             "\"hosts\":[{\"address\":\"10.0.0.1:80\"},{\"address\":\"10.0.0.2:80\"},"
                             "{\"address\":\"10.0.0.3:80\"}]}]}",
                             &reg));
    check(wscap_cluster_get(reg, "pods", &pods));
    for (int round = 0; round < 3; round++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            check(wscap_acquire(reg, "pods", &p));
            wscap_permit_release(p);
        }
        double t1 = now_ns();
        for (long i = 0; i < n; i++) {
            check(wscap_cluster_acquire(pods, &p));
            wscap_permit_release(p);
        }
        double t2 = now_ns();
        for (long i = 0; i < n; i++) {
            check(wscap_acquire_host(reg, "pods", "10.0.0.2:80", &p));
            wscap_permit_release(p);
        }
        double t3 = now_ns();
        printf("acquire+release: by name %.1f ns, cluster handle %.1f ns, fixed host %.1f ns\n",
               (t1 - t0) / (double)n, (t2 - t1) / (double)n, (t3 - t2) / (double)n);
    }
    wscap_cluster_free(pods);
    wscap_registry_free(reg);
    return 0;
}
