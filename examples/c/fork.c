/*
 * weir from C across fork(): the child creates an instance of its own (the parent's
 * background threads do not exist in the child, so it must not use the parent's), and
 * the parent's instance keeps working, its data untouched by the child's.
 *
 * Build (from the repository root, after `cargo build --release -p weir-ffi`):
 *   gcc -std=c11 -Wall -Wextra -Iinclude examples/c/fork.c \
 *       target/release/libweir_ffi.a -lpthread -ldl -lm -o fork
 * Exits 0 and prints "ok" when both sides see exactly their own values.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "weir.h"

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

/* `series` in a fresh flush of `w`, or -1 (and a message) if the flush fails. */
static double flushed(weir_instance *w, const char *series) {
    uint8_t *buf = NULL;
    size_t len = 0;
    if (weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len) != WEIR_STATUS_OK) {
        fprintf(stderr, "flush: %s\n", weir_last_error());
        return -1.0;
    }
    double v = value_of((const char *)buf, series);
    weir_buffer_free(buf, len);
    return v;
}

int main(void) {
    weir_instance *parent = NULL;
    weir_counter *jobs = NULL;
    if (weir_instance_new(NULL, &parent) != WEIR_STATUS_OK ||
        weir_counter_new(parent, "jobs_total", NULL, 0, &jobs) != WEIR_STATUS_OK ||
        weir_counter_add(jobs, 5) != WEIR_STATUS_OK) {
        fprintf(stderr, "FAIL setup: %s\n", weir_last_error());
        return 1;
    }

    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        /* The child: an instance of its own; the parent's is left alone (not even
           freed: freeing it would wait for threads that do not exist here). */
        weir_instance *child = NULL;
        weir_counter *mine = NULL;
        int bad = weir_instance_new(NULL, &child) != WEIR_STATUS_OK ||
                  weir_counter_new(child, "jobs_total", NULL, 0, &mine) != WEIR_STATUS_OK ||
                  weir_counter_add(mine, 7) != WEIR_STATUS_OK;
        double v = bad ? -1.0 : flushed(child, "jobs_total");
        if (v != 7.0) {
            fprintf(stderr, "FAIL child: jobs_total %g, want 7 (%s)\n", v, weir_last_error());
            _exit(1);
        }
        weir_counter_free(mine);
        weir_instance_free(child);
        _exit(0);
    }

    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "FAIL: the child did not exit 0 (status %d)\n", status);
        return 1;
    }
    /* The parent keeps working: its own 5, plus 1 now, and nothing of the child's. */
    if (weir_counter_add(jobs, 1) != WEIR_STATUS_OK) {
        fprintf(stderr, "FAIL parent add: %s\n", weir_last_error());
        return 1;
    }
    double v = flushed(parent, "jobs_total");
    if (v != 6.0) {
        fprintf(stderr, "FAIL parent: jobs_total %g, want 6\n", v);
        return 1;
    }
    weir_counter_free(jobs);
    weir_instance_free(parent);
    printf("ok\n");
    return 0;
}
