// weir from C++, forwarding: an embedded instance with a prometheus_remote_write
// pipeline (from a TOML file) aggregates with two threads, flushes into the pipeline's
// write-ahead log and sends to the backend.
//
// Build (from the repository root, after `cargo build --release -p weir-ffi`):
//   g++ -std=c++17 -Wall -Wextra -Iinclude examples/cpp/remote_write.cpp
//     target/release/libweir_ffi.a -lpthread -ldl -lm -o remote_write
// Run:
//   remote_write CONFIG.toml send RUN    aggregate, flush, close (waits up to 15 s for
//                                        the backend to take the batch)
//   remote_write CONFIG.toml crash RUN   aggregate, flush into the WAL, then kill -9
//                                        itself: nothing is sent, nothing cleaned up
//   remote_write CONFIG.toml replay      start on the same data_dir (the pipeline sends
//                                        what its WAL holds), close
// RUN labels the series: e2e_jobs_total{run} = 42, e2e_queue_depth{run} = 5.5,
// e2e_job_seconds{run}: 3 observations of 0.2.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "weir.h"

namespace {

void check(weir_status st, const char *what) {
    if (st != WEIR_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": status " + std::to_string(st) + ": " +
                                 weir_last_error());
    }
}

void aggregate(weir_instance *w, const std::string &run) {
    weir_label labels[] = {{"run", run.c_str()}};
    weir_counter *jobs = nullptr;
    check(weir_counter_new(w, "e2e_jobs_total", labels, 1, &jobs), "counter");
    std::vector<std::thread> workers;
    for (int t = 0; t < 2; t++) {
        workers.emplace_back([jobs] {
            for (int i = 0; i < 21; i++) check(weir_counter_add(jobs, 1), "add");
        });
    }
    for (auto &t : workers) t.join();
    weir_counter_free(jobs);
    check(weir_record_gauge(w, "e2e_queue_depth", labels, 1, 5.5), "gauge");
    for (int i = 0; i < 3; i++) check(weir_record_observe(w, "e2e_job_seconds", labels, 1, 0.2), "observe");
    // An on-demand flush: the batch goes into the pipeline's WAL before this returns.
    uint8_t *buf = nullptr;
    size_t len = 0;
    check(weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len), "flush");
    weir_buffer_free(buf, len);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s CONFIG.toml send RUN | crash RUN | replay\n", argv[0]);
        return 2;
    }
    std::ifstream file(argv[1]);
    std::stringstream config;
    config << file.rdbuf();
    std::string mode = argv[2];
    std::string run = argc > 3 ? argv[3] : "";
    weir_instance *w = nullptr;
    try {
        check(weir_instance_new(config.str().c_str(), &w), "instance");
        if (mode == "send" || mode == "crash") aggregate(w, run);
        if (mode == "crash") {
            std::printf("flushed; killing myself with SIGKILL\n");
            std::fflush(stdout);
            std::raise(SIGKILL);
        }
        check(weir_instance_close(w, 15000), "close");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "FAIL: %s\n", e.what());
        weir_instance_free(w);
        return 1;
    }
    weir_instance_free(w);
    std::printf("ok\n");
    return 0;
}
