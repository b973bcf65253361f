/*
 * weir from C: every kind of bad input gets its status and a message, never a crash,
 * and the refusals are counted in the instance's self-metrics.
 *
 * Build (from the repository root, after `cargo build --release -p weir-ffi`):
 *   gcc -std=c11 -Wall -Wextra -Iinclude examples/c/bad_input.c \
 *       target/release/libweir_ffi.a -lpthread -ldl -lm -o bad_input
 * Exits 0 and prints "ok" when every case behaves as documented.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weir.h"

static int failures = 0;

/* Checks that `call` returned `want` and that weir_last_error() contains `text`. */
static void expect(const char *what, weir_status got, weir_status want, const char *text) {
    const char *msg = weir_last_error();
    if (got != want) {
        fprintf(stderr, "FAIL %s: status %u, want %u (last error: %s)\n", what, (unsigned)got,
                (unsigned)want, msg);
        failures++;
    } else if (want != WEIR_STATUS_OK && strstr(msg, text) == NULL) {
        fprintf(stderr, "FAIL %s: message \"%s\" lacks \"%s\"\n", what, msg, text);
        failures++;
    }
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
    weir_instance *w = NULL;
    weir_counter *c = NULL;
    weir_gauge *g = NULL;

    expect("out NULL", weir_instance_new(NULL, NULL), WEIR_STATUS_NULL_ARGUMENT, "out is NULL");
    expect("config not UTF-8", weir_instance_new("\xff\xfe", &w), WEIR_STATUS_INVALID_UTF8,
           "not valid UTF-8");
    expect("unknown config key", weir_instance_new("[aggregation]\nflush_every = \"1s\"\n", &w),
           WEIR_STATUS_INVALID_CONFIG, "flush_every");
    expect("config value out of range", weir_instance_new("[aggregation]\nmax_series = 0\n", &w),
           WEIR_STATUS_INVALID_CONFIG, "max_series");
    expect("receiver section in an embedded config",
           weir_instance_new("[receivers.statsd]\naddress = \"127.0.0.1:9\"\n", &w), WEIR_STATUS_INVALID_CONFIG,
           "an embedded weir instance has no receivers");
    if (w != NULL) {
        fprintf(stderr, "FAIL: a refused config made an instance\n");
        failures++;
    }

    /* The global series limit from the configuration: the next new series is refused. */
    expect("small instance", weir_instance_new("[aggregation]\nmax_series = 2\n", &w), WEIR_STATUS_OK, "");
    if (w == NULL) return 1;
    expect("series 1", weir_record_gauge(w, "a", NULL, 0, 1.0), WEIR_STATUS_OK, "");
    expect("series 2", weir_counter_new(w, "b_total", NULL, 0, &c), WEIR_STATUS_OK, "");
    expect("series 3", weir_gauge_new(w, "c", NULL, 0, &g), WEIR_STATUS_SERIES_LIMIT, "global series limit reached");
    expect("existing series at the limit", weir_counter_add(c, 1), WEIR_STATUS_OK, "");
    weir_counter_free(c);
    c = NULL;
    weir_instance_free(w);

    expect("instance", weir_instance_new(NULL, &w), WEIR_STATUS_OK, "");
    if (w == NULL) return 1;

    expect("instance NULL", weir_counter_new(NULL, "x_total", NULL, 0, &c), WEIR_STATUS_NULL_ARGUMENT,
           "instance is NULL");
    expect("name NULL", weir_counter_new(w, NULL, NULL, 0, &c), WEIR_STATUS_NULL_ARGUMENT, "name is NULL");
    expect("name not UTF-8", weir_counter_new(w, "bad\xc3", NULL, 0, &c), WEIR_STATUS_INVALID_UTF8,
           "name is not valid UTF-8");
    expect("invalid metric name", weir_counter_new(w, "1bad", NULL, 0, &c), WEIR_STATUS_INVALID_METRIC_NAME,
           "invalid metric name \"1bad\"");

    weir_label bad_name[] = {{"a-b", "v"}};
    expect("invalid label name", weir_counter_new(w, "x_total", bad_name, 1, &c),
           WEIR_STATUS_INVALID_LABEL_NAME, "invalid label name \"a-b\"");
    weir_label dup[] = {{"a", "1"}, {"a", "2"}};
    expect("duplicate label", weir_counter_new(w, "x_total", dup, 2, &c), WEIR_STATUS_INVALID_LABEL_NAME,
           "duplicate label name \"a\"");
    weir_label null_value[] = {{"a", NULL}};
    expect("label value NULL", weir_counter_new(w, "x_total", null_value, 1, &c),
           WEIR_STATUS_NULL_ARGUMENT, "a label value is NULL");
    weir_label utf8_value[] = {{"a", "\x80"}};
    expect("label value not UTF-8", weir_record_counter(w, "x_total", utf8_value, 1, 1.0),
           WEIR_STATUS_INVALID_UTF8, "a label value is not valid UTF-8");
    expect("labels NULL with a length", weir_counter_new(w, "x_total", NULL, 1, &c),
           WEIR_STATUS_NULL_ARGUMENT, "labels");

    weir_label many[WEIR_MAX_LABELS + 1];
    char names[WEIR_MAX_LABELS + 1][8];
    for (int i = 0; i <= WEIR_MAX_LABELS; i++) {
        snprintf(names[i], sizeof names[i], "l%d", i);
        many[i].name = names[i];
        many[i].value = "v";
    }
    expect("as many labels as allowed", weir_counter_new(w, "wide_total", many, WEIR_MAX_LABELS, &c),
           WEIR_STATUS_OK, "");
    weir_counter_free(c);
    c = NULL;
    expect("too many labels", weir_counter_new(w, "wide_total", many, WEIR_MAX_LABELS + 1, &c),
           WEIR_STATUS_TOO_MANY_LABELS, "65 labels given, at most 64");
    expect("out NULL for a handle", weir_counter_new(w, "x_total", NULL, 0, NULL), WEIR_STATUS_NULL_ARGUMENT,
           "out is NULL");
    if (c != NULL) {
        fprintf(stderr, "FAIL: a failed call wrote its output\n");
        failures++;
    }

    /* Values and kinds. */
    expect("counter", weir_counter_new(w, "x_total", NULL, 0, &c), WEIR_STATUS_OK, "");
    expect("negative increment", weir_counter_add_double(c, -1.0), WEIR_STATUS_INVALID_VALUE,
           "invalid value for a counter");
    expect("NaN increment", weir_counter_add_double(c, NAN), WEIR_STATUS_INVALID_VALUE, "invalid value");
    expect("same name as a gauge", weir_gauge_new(w, "x_total", NULL, 0, &g), WEIR_STATUS_TYPE_CONFLICT,
           "series exists as a counter, not a gauge");
    expect("update through NULL", weir_counter_add(NULL, 1), WEIR_STATUS_NULL_ARGUMENT, "counter is NULL");
    expect("gauge NULL", weir_gauge_set(NULL, 1.0), WEIR_STATUS_NULL_ARGUMENT, "gauge is NULL");
    expect("histogram NULL", weir_histogram_observe(NULL, 1.0), WEIR_STATUS_NULL_ARGUMENT, "histogram is NULL");

    /* The per-metric series limit (10,000 by default): the next new series is refused,
       existing ones keep counting. */
    char value[16];
    weir_label one[] = {{"id", value}};
    int refused = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(value, sizeof value, "%d", i);
        refused += weir_record_counter(w, "wide_metric_total", one, 1, 1.0) != WEIR_STATUS_OK;
    }
    if (refused) {
        fprintf(stderr, "FAIL: %d of the first 10000 series refused\n", refused);
        failures++;
    }
    snprintf(value, sizeof value, "%d", 10000);
    expect("series limit", weir_record_counter(w, "wide_metric_total", one, 1, 1.0), WEIR_STATUS_SERIES_LIMIT,
           "reached its series limit");
    snprintf(value, sizeof value, "%d", 7);
    expect("existing series past the limit", weir_record_counter(w, "wide_metric_total", one, 1, 1.0),
           WEIR_STATUS_OK, "");

    /* Output arguments. */
    uint8_t *buf = NULL;
    size_t len = 0;
    expect("unknown format", weir_flush(w, 99, &buf, &len), WEIR_STATUS_INVALID_ARGUMENT, "unknown format 99");
    expect("flush out_buf NULL", weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, NULL, &len),
           WEIR_STATUS_NULL_ARGUMENT, "out_buf is NULL");
    expect("flush instance NULL", weir_flush(NULL, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len),
           WEIR_STATUS_NULL_ARGUMENT, "instance is NULL");
    weir_buffer_free(NULL, 0);

    /* Every refusal above is counted. */
    expect("self metrics", weir_self_metrics(w, &buf, &len), WEIR_STATUS_OK, "");
    const char *m = (const char *)buf;
    struct { const char *series; double want; } counts[] = {
        {"weir_ffi_rejected_total{reason=\"null_argument\"}", 3},
        {"weir_ffi_rejected_total{reason=\"invalid_utf8\"}", 2},
        {"weir_ffi_rejected_total{reason=\"too_many_labels\"}", 1},
        {"weir_rejected_total{reason=\"invalid_metric_name\"}", 1},
        {"weir_rejected_total{reason=\"invalid_label_name\"}", 1},
        {"weir_rejected_total{reason=\"duplicate_label\"}", 1},
        {"weir_rejected_total{reason=\"invalid_value\"}", 2},
        {"weir_rejected_total{reason=\"type_conflict\"}", 1},
        {"weir_rejected_total{reason=\"cardinality_limit_exceeded\"}", 1},
    };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        double got = value_of(m, counts[i].series);
        if (got != counts[i].want) {
            fprintf(stderr, "FAIL: %s is %g, want %g in:\n%s\n", counts[i].series, got, counts[i].want, m);
            failures++;
        }
    }
    weir_buffer_free(buf, len);

    /* After close: no more flushes; handles stay safe to use and free, also after the
       instance is freed. */
    expect("close", weir_instance_close(w, 0), WEIR_STATUS_OK, "");
    expect("close again", weir_instance_close(w, 0), WEIR_STATUS_OK, "");
    expect("flush after close", weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len), WEIR_STATUS_CLOSED,
           "closed");
    weir_instance_free(w);
    weir_instance_free(NULL);
    expect("handle after its instance", weir_counter_add(c, 1), WEIR_STATUS_OK, "");
    weir_counter_free(c);
    weir_counter_free(NULL);
    weir_gauge_free(NULL);
    weir_histogram_free(NULL);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
