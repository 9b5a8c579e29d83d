/*
 * wscap global mode from C: two registries stand for two proxy instances that share one
 * Redis. Each host has a limit of 2 across the fleet; the program admits round robin through
 * both instances (acquire; on NO_CAPACITY borrow and wait for the callback, then acquire again)
 * until the fleet is full, checks that exactly 6 connections were admitted on the 3 hosts and
 * that no host went over its limit, prints the fleet view and shuts down with permits held.
 *
 * Valid C11 and C++ (it is compiled as both by ffi/tests/c_example.rs), needs a redis-server:
 *   cargo build -p wscap-ffi
 *   gcc -Wall -Wextra -Werror -std=c11 -pthread -I include examples/c/global.c \
 *       target/debug/libwscap_ffi.a -lpthread -ldl -lm -o global
 *   redis-server --port 6390 --save '' &
 *   ./global redis://127.0.0.1:6390
 */
#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wscap.h"

#define INSTANCES 2
#define HOSTS 3
#define LIMIT 2
#define MAX_HELD 16

static const char *const CLUSTER = "pods";
static const char *const ADDRESSES[HOSTS] = {"10.9.0.1:8080", "10.9.0.2:8080", "10.9.0.3:8080"};

/* One borrow in flight: the callback fills it in on the coordinator thread and signals. */
struct borrow_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    wscap_borrow_outcome outcome;
};

/* Runs once per borrow, on the coordinator thread: record, signal, return at once. */
static void on_borrowed(void *user_data, wscap_borrow_outcome outcome) {
    struct borrow_wait *w = (struct borrow_wait *)user_data;
    pthread_mutex_lock(&w->lock);
    w->outcome = outcome;
    w->done = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int fail(const char *what, wscap_result r) {
    fprintf(stderr, "%s: %s\n", what, wscap_result_str(r));
    return 1;
}

/* Admits one connection on `reg` as a proxy would. Returns NULL when refused. */
static wscap_permit *admit(const wscap_registry *reg, const wscap_global *global) {
    wscap_permit *permit = NULL;
    if (wscap_acquire(reg, CLUSTER, &permit) == WSCAP_RESULT_OK) return permit;
    for (;;) {
        struct borrow_wait w;
        pthread_mutex_init(&w.lock, NULL);
        pthread_cond_init(&w.cond, NULL);
        w.done = 0;
        w.outcome = WSCAP_BORROW_OUTCOME_UNAVAILABLE;
        wscap_result r = wscap_global_request_borrow(global, CLUSTER, on_borrowed, &w);
        if (r != WSCAP_RESULT_OK) {
            fail("wscap_global_request_borrow", r);
            exit(1);
        }
        pthread_mutex_lock(&w.lock);
        while (!w.done) pthread_cond_wait(&w.cond, &w.lock);
        pthread_mutex_unlock(&w.lock);
        pthread_cond_destroy(&w.cond);
        pthread_mutex_destroy(&w.lock);
        if (wscap_acquire(reg, CLUSTER, &permit) == WSCAP_RESULT_OK) return permit;
        if (w.outcome != WSCAP_BORROW_OUTCOME_GRANTED) return NULL;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s redis://host:port\n", argv[0]);
        return 2;
    }
    wscap_registry *regs[INSTANCES] = {NULL, NULL};
    wscap_global *globals[INSTANCES] = {NULL, NULL};
    char cfg[512];
    const char *reg_cfg =
        "{\"clusters\":[{\"name\":\"pods\",\"max_connections_per_host\":2,\"hosts\":["
        "{\"address\":\"10.9.0.1:8080\"},{\"address\":\"10.9.0.2:8080\"},"
        "{\"address\":\"10.9.0.3:8080\"}]}]}";

    /* A refused setting, and why. */
    char why[256];
    size_t n = 0;
    const char *bad = "{\"redis_url\":\"redis://127.0.0.1:1\",\"refresh_ms\":5000}";
    wscap_global *unused = NULL;
    if (wscap_global_start(NULL, bad, &unused) != WSCAP_RESULT_NULL_ARGUMENT) return 1;
    if (wscap_registry_new(reg_cfg, &regs[0]) != WSCAP_RESULT_OK) return 1;
    if (wscap_global_start(regs[0], bad, &unused) == WSCAP_RESULT_INVALID_CONFIG &&
        wscap_global_config_error(bad, why, sizeof why, &n) == WSCAP_RESULT_OK)
        printf("refused as expected: %s\n", why);
    else
        return 1;

    for (int i = 0; i < INSTANCES; i++) {
        wscap_result r;
        if (!regs[i] && (r = wscap_registry_new(reg_cfg, &regs[i])) != WSCAP_RESULT_OK)
            return fail("wscap_registry_new", r);
        snprintf(cfg, sizeof cfg,
                 "{\"redis_url\":\"%s\",\"instance_id\":\"proxy-%d\",\"lease_ttl_ms\":900,"
                 "\"refresh_ms\":100,\"restart_grace_ms\":300}",
                 argv[1], i);
        if ((r = wscap_global_start(regs[i], cfg, &globals[i])) != WSCAP_RESULT_OK)
            return fail("wscap_global_start", r);
    }
    /* First claims, then the restart grace of a Redis new to these hosts. */
    sleep_ms(800);

    wscap_permit *held[MAX_HELD];
    int count = 0, per_host[HOSTS] = {0, 0, 0}, violations = 0;
    for (int attempt = 0; count < HOSTS * LIMIT && attempt < 1000; attempt++) {
        int i = attempt % INSTANCES;
        wscap_permit *p = admit(regs[i], globals[i]);
        if (!p) {
            sleep_ms(10); /* like a client retrying after a 503: unused share flows back */
            continue;
        }
        char host[WSCAP_ADDRESS_BUF_LEN];
        wscap_permit_host(p, host, sizeof host, &n);
        for (int h = 0; h < HOSTS; h++)
            if (strcmp(host, ADDRESSES[h]) == 0 && ++per_host[h] > LIMIT) violations++;
        held[count++] = p;
    }
    int refused = 0;
    for (int i = 0; i < 2 * INSTANCES; i++) {
        wscap_permit *p = admit(regs[i % INSTANCES], globals[i % INSTANCES]);
        if (p) {
            held[count++] = p;
            violations++;
        } else {
            refused++;
        }
    }
    printf("admitted %d (per host %d %d %d), then refused %d of %d, limit violations %d\n",
           count, per_host[0], per_host[1], per_host[2], refused, 2 * INSTANCES, violations);

    sleep_ms(300); /* a few refreshes: every instance's live counts are in Redis */
    char view[4096];
    wscap_result r = wscap_global_fleet_json(globals[0], view, sizeof view, &n);
    if (r != WSCAP_RESULT_OK) return fail("wscap_global_fleet_json", r);
    printf("%s\n", view);

    /* Shut down with permits held, in either order: they stay valid until released. */
    wscap_global_free(globals[0]);
    wscap_registry_free(regs[1]);
    for (int i = 0; i < count; i++) wscap_permit_release(held[i]);
    wscap_registry_free(regs[0]);
    wscap_global_free(globals[1]);

    if (count != HOSTS * LIMIT || violations != 0) return 1;
    printf("OK\n");
    return 0;
}
