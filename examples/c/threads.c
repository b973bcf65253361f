/*
 * weir from C: several threads update shared handles, then one flush is checked for
 * exact values in the Prometheus text it returns.
 *
 * Build (from the repository root, after `cargo build --release -p weir-ffi`):
 *   gcc -std=c11 -Wall -Wextra -Iinclude examples/c/threads.c \
 *       target/release/libweir_ffi.a -lpthread -ldl -lm -o threads
 * Exits 0 and prints "ok" when every value is exact.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weir.h"

#define THREADS 4
#define ROUNDS 100000

static int failures = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, " (last error: %s)\n", weir_last_error()); \
            failures++;                                               \
        }                                                             \
    } while (0)

struct shared {
    weir_instance *weir;
    weir_counter *requests;
    weir_counter *bytes;
    weir_gauge *in_flight;
    weir_histogram *latency;
};

static void *work(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < ROUNDS; i++) {
        CHECK(weir_counter_add(s->requests, 1) == WEIR_STATUS_OK, "counter add");
        CHECK(weir_gauge_add(s->in_flight, 1.0) == WEIR_STATUS_OK, "gauge add");
        CHECK(weir_gauge_add(s->in_flight, -1.0) == WEIR_STATUS_OK, "gauge add");
        if (i % 100 == 0) {
            CHECK(weir_counter_add_double(s->bytes, 0.5) == WEIR_STATUS_OK, "counter add double");
            CHECK(weir_histogram_observe(s->latency, 0.2) == WEIR_STATUS_OK, "observe");
        }
    }
    /* One-shot updates by name: labels in another order than the handle's. */
    weir_label labels[] = {{"path", "/a"}, {"method", "GET"}};
    CHECK(weir_record_counter(s->weir, "requests_total", labels, 2, 10.0) == WEIR_STATUS_OK,
          "record counter");
    return NULL;
}

/* The value on the line that starts with `series` followed by a space, or -1. */
static double value_of(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            return strtod(line + n + 1, NULL);
        }
    }
    return -1.0;
}

int main(void) {
    struct shared s;
    CHECK(weir_instance_new(NULL, &s.weir) == WEIR_STATUS_OK, "instance");
    weir_label labels[] = {{"method", "GET"}, {"path", "/a"}};
    CHECK(weir_counter_new(s.weir, "requests_total", labels, 2, &s.requests) == WEIR_STATUS_OK, "new counter");
    CHECK(weir_counter_new(s.weir, "bytes_total", NULL, 0, &s.bytes) == WEIR_STATUS_OK, "new counter");
    CHECK(weir_gauge_new(s.weir, "in_flight", NULL, 0, &s.in_flight) == WEIR_STATUS_OK, "new gauge");
    CHECK(weir_histogram_new(s.weir, "latency_seconds", NULL, 0, &s.latency) == WEIR_STATUS_OK, "new histogram");
    if (failures) return 1;

    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, work, &s);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);

    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(weir_flush(s.weir, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len) == WEIR_STATUS_OK, "flush");
    const char *text = (const char *)buf;
    CHECK(strlen(text) == len, "the text is NUL-terminated at its length");
    CHECK(value_of(text, "requests_total{method=\"GET\",path=\"/a\"}") == THREADS * (ROUNDS + 10.0),
          "requests_total in:\n%s", text);
    CHECK(value_of(text, "bytes_total") == THREADS * (ROUNDS / 100) * 0.5, "bytes_total in:\n%s", text);
    CHECK(value_of(text, "in_flight") == 0.0, "in_flight in:\n%s", text);
    CHECK(value_of(text, "latency_seconds_count") == THREADS * (ROUNDS / 100), "count in:\n%s", text);
    CHECK(value_of(text, "latency_seconds_bucket{le=\"0.1\"}") == 0.0, "bucket 0.1 in:\n%s", text);
    CHECK(value_of(text, "latency_seconds_bucket{le=\"0.25\"}") == THREADS * (ROUNDS / 100),
          "bucket 0.25 in:\n%s", text);
    weir_buffer_free(buf, len);

    /* The next flush carries the running totals of counters (Prometheus text is
       cumulative), with nothing added. */
    CHECK(weir_counter_add(s.requests, 5) == WEIR_STATUS_OK, "counter add");
    CHECK(weir_flush(s.weir, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len) == WEIR_STATUS_OK, "flush");
    CHECK(value_of((const char *)buf, "requests_total{method=\"GET\",path=\"/a\"}") == THREADS * (ROUNDS + 10.0) + 5,
          "running total in:\n%s", (const char *)buf);
    weir_buffer_free(buf, len);

    /* The protobuf formats give non-empty bodies for a non-empty batch. */
    CHECK(weir_counter_add(s.requests, 1) == WEIR_STATUS_OK, "counter add");
    CHECK(weir_flush(s.weir, WEIR_FORMAT_REMOTE_WRITE, &buf, &len) == WEIR_STATUS_OK && len > 0, "remote write");
    weir_buffer_free(buf, len);
    CHECK(weir_flush(s.weir, WEIR_FORMAT_OTLP_DELTA, &buf, &len) == WEIR_STATUS_OK && len > 0, "otlp");
    weir_buffer_free(buf, len);

    weir_counter_free(s.requests);
    weir_counter_free(s.bytes);
    weir_gauge_free(s.in_flight);
    weir_histogram_free(s.latency);
    CHECK(weir_instance_close(s.weir, 1000) == WEIR_STATUS_OK, "close");
    weir_instance_free(s.weir);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
