/*
 * wscap from C: several threads run an admission loop against one cluster of 3 hosts with
 * limits, check that no host ever holds more connections than its limit, that every count is
 * back to zero at the end, and print the Prometheus text.
 *
 * Valid C11 and C++ (it is compiled as both by ffi/tests/c_example.rs):
 *   cargo build -p wscap-ffi
 *   gcc -Wall -Wextra -Werror -std=c11 -pthread -I include examples/c/admission.c \
 *       target/debug/libwscap_ffi.a -lpthread -ldl -lm -o admission
 *   ./admission [rounds-per-thread]
 */
#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wscap.h"

#define THREADS 6
#define HOSTS 3
#define HELD_MAX 4

static const char *const CLUSTER = "pods";
static const char *const ADDRESSES[HOSTS] = {"127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"};
/* Host 1 follows the cluster default (3); hosts 0 and 2 have their own limits. */
static const uint32_t LIMITS[HOSTS] = {2, 3, 4};

static wscap_registry *registry;
static wscap_cluster *pods; /* resolved once: admission through it skips the lookup by name */
static long rounds = 3000;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long live[HOSTS];     /* connections this program holds per host, under `lock` */
static long peak[HOSTS];     /* highest `live` seen */
static long violations;      /* times `live` went above the limit */
static long admitted, refused, unexpected;

static int fail(const char *what, wscap_result r) {
    fprintf(stderr, "admission: %s: %s\n", what, wscap_result_str(r));
    return 1;
}

static int host_index(const char *address) {
    for (int i = 0; i < HOSTS; i++) {
        if (strcmp(address, ADDRESSES[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* Reads a text export into a malloc'd buffer, growing it until the text fits. */
static char *export_text(int prometheus) {
    size_t cap = 0, n = 0;
    char *buf = NULL;
    for (;;) {
        wscap_result r = prometheus ? wscap_export_prometheus(registry, buf, cap, &n)
                                    : wscap_export_json(registry, buf, cap, &n);
        if (r == WSCAP_RESULT_OK) {
            return buf;
        }
        free(buf);
        if (r != WSCAP_RESULT_BUFFER_TOO_SMALL) {
            fail("export", r);
            return NULL;
        }
        cap = n; /* the size needed, NUL included; it may grow again before the next call */
        buf = (char *)malloc(cap);
        if (buf == NULL) {
            return NULL;
        }
    }
}

struct held {
    wscap_permit *permit;
    int host;
};

static void release(struct held *h) {
    pthread_mutex_lock(&lock);
    live[h->host]--;
    pthread_mutex_unlock(&lock);
    wscap_permit_release(h->permit); /* count ours down first: ours <= wscap's <= limit */
    h->permit = NULL;
}

static void *worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1u;
    struct held held[HELD_MAX];
    int nheld = 0;
    for (long i = 0; i < rounds; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned dice = (seed >> 16) & 0xff;
        if (nheld < HELD_MAX) {
            wscap_permit *permit = NULL;
            wscap_result r;
            if (dice % 5 == 0) {
                r = wscap_acquire_host(registry, CLUSTER, ADDRESSES[dice % HOSTS], &permit);
            } else if (dice % 2 == 0) {
                r = wscap_cluster_acquire(pods, &permit);
            } else {
                r = wscap_acquire(registry, CLUSTER, &permit);
            }
            if (r == WSCAP_RESULT_OK) {
                char address[WSCAP_ADDRESS_BUF_LEN];
                size_t n = 0;
                wscap_result hr = wscap_permit_host(permit, address, sizeof address, &n);
                int k = hr == WSCAP_RESULT_OK ? host_index(address) : -1;
                pthread_mutex_lock(&lock);
                admitted++;
                if (k < 0) {
                    unexpected++;
                } else {
                    live[k]++;
                    if (live[k] > peak[k]) {
                        peak[k] = live[k];
                    }
                    if (live[k] > (long)LIMITS[k]) {
                        violations++;
                    }
                }
                pthread_mutex_unlock(&lock);
                if (k < 0) {
                    wscap_permit_release(permit);
                } else {
                    held[nheld].permit = permit;
                    held[nheld].host = k;
                    nheld++;
                }
            } else {
                pthread_mutex_lock(&lock);
                if (r == WSCAP_RESULT_NO_CAPACITY) {
                    refused++;
                } else {
                    unexpected++;
                    fprintf(stderr, "admission: acquire: %s\n", wscap_result_str(r));
                }
                pthread_mutex_unlock(&lock);
            }
        }
        /* Close a connection about half the time, and always when holding the most. */
        if (nheld > 0 && ((dice & 1) != 0 || nheld == HELD_MAX)) {
            int j = (int)(dice % (unsigned)nheld);
            release(&held[j]);
            held[j] = held[--nheld];
        }
        if ((uintptr_t)arg == 0 && i % 500 == 0) {
            free(export_text(0)); /* reporting runs alongside admission */
        }
        if (dice % 16 == 0) {
            sched_yield();
        }
    }
    while (nheld > 0) {
        release(&held[--nheld]);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        rounds = strtol(argv[1], NULL, 10);
    }
    printf("wscap %s\n", wscap_version());

    /* A refused configuration says what is wrong. */
    const char *bad = "{\"clusters\":[{\"name\":\"pods\",\"max_connections_per_host\":3,"
                      "\"hosts\":[{\"address\":\"pod-1:80\"}]}]}";
    wscap_result r = wscap_registry_new(bad, &registry);
    char why[256];
    size_t n = 0;
    if (r != WSCAP_RESULT_INVALID_CONFIG || registry != NULL ||
        wscap_config_error(bad, why, sizeof why, &n) != WSCAP_RESULT_OK) {
        return fail("bad config was not refused", r);
    }
    printf("refused as expected: %s\n", why);

    r = wscap_registry_new("{\"clusters\":[{\"name\":\"pods\",\"max_connections_per_host\":3}]}",
                           &registry);
    if (r != WSCAP_RESULT_OK) {
        return fail("wscap_registry_new", r);
    }
    wscap_host hosts[HOSTS];
    memset(hosts, 0, sizeof hosts); /* zeroed limit fields: follow the cluster default */
    for (int i = 0; i < HOSTS; i++) {
        hosts[i].address = ADDRESSES[i];
    }
    hosts[0].max_connections = LIMITS[0];
    hosts[0].has_max_connections = 1;
    hosts[2].max_connections = LIMITS[2];
    hosts[2].has_max_connections = 1;
    wscap_membership_change change;
    r = wscap_set_hosts(registry, CLUSTER, hosts, HOSTS, &change);
    if (r != WSCAP_RESULT_OK || change.added != HOSTS) {
        return fail("wscap_set_hosts", r);
    }

    r = wscap_cluster_get(registry, CLUSTER, &pods);
    if (r != WSCAP_RESULT_OK) {
        return fail("wscap_cluster_get", r);
    }

    pthread_t threads[THREADS];
    for (uintptr_t t = 0; t < THREADS; t++) {
        if (pthread_create(&threads[t], NULL, worker, (void *)t) != 0) {
            fprintf(stderr, "admission: pthread_create failed\n");
            return 1;
        }
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
    }

    char *text = export_text(1);
    if (text == NULL) {
        return 1;
    }
    int ok = violations == 0 && unexpected == 0 && admitted > 0 && refused > 0;
    for (int i = 0; i < HOSTS; i++) {
        char line[160];
        snprintf(line, sizeof line, "wscap_active_connections{cluster=\"pods\",host=\"%s\"} 0\n",
                 ADDRESSES[i]);
        int zero = live[i] == 0 && strstr(text, line) != NULL;
        printf("host %-15s limit %u peak %ld back to zero: %s\n", ADDRESSES[i],
               (unsigned)LIMITS[i], peak[i], zero ? "yes" : "NO");
        ok = ok && zero && peak[i] <= (long)LIMITS[i];
    }
    printf("admitted %ld, refused (no_capacity) %ld, limit violations %ld, unexpected %ld\n",
           admitted, refused, violations, unexpected);
    printf("--- prometheus ---\n%s", text);
    free(text);
#ifdef WSCAP_EXAMPLE_LEAK
    /* For the test harness only: a permit that is never released must show up in valgrind. */
    wscap_permit *leaked = NULL;
    if (wscap_acquire(registry, CLUSTER, &leaked) != WSCAP_RESULT_OK) {
        return 1;
    }
    leaked = NULL;
#endif
    wscap_cluster_free(pods);
    wscap_registry_free(registry);
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
