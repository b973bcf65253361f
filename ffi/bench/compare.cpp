// weir's C ABI against prometheus-cpp (1.0.1, Debian's prometheus-cpp-dev), side by
// side in one process: the same operations, the same iteration counts, the median of
// several runs each. See ffi/bench/README.md for the command and the results.
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "weir.h"

namespace {

using Clock = std::chrono::steady_clock;

// Median nanoseconds per operation of `body(iterations)` over `runs` runs.
double ns_per_op(long iterations, const std::function<void(long)> &body, int runs = 7) {
    std::vector<double> t;
    body(iterations / 10);  // warm-up
    for (int r = 0; r < runs; r++) {
        auto start = Clock::now();
        body(iterations);
        auto end = Clock::now();
        t.push_back(std::chrono::duration<double, std::nano>(end - start).count() / iterations);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Two threads each doing `iterations` operations; nanoseconds per operation of one thread.
double two_threads(long iterations, const std::function<void(long)> &body) {
    return ns_per_op(iterations, [&](long n) {
        std::thread a(body, n), b(body, n);
        a.join();
        b.join();
    }, 5);
}

void ok(weir_status st, const char *what) {
    if (st != WEIR_STATUS_OK) {
        std::fprintf(stderr, "%s: %s\n", what, weir_last_error());
        std::exit(1);
    }
}

void row(const char *what, double prom, double weir) {
    std::printf("| %-44s | %8.1f | %8.1f | %5.2fx |\n", what, prom, weir, weir / prom);
}

}  // namespace

int main() {
    const long n = 20'000'000;
    const long by_name = 2'000'000;
    const std::vector<double> bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

    // prometheus-cpp
    prometheus::Registry registry;
    auto &pc_family = prometheus::BuildCounter().Name("requests_total").Register(registry);
    auto &pc_counter = pc_family.Add({{"method", "GET"}, {"path", "/a"}});
    auto &pc_hist_family = prometheus::BuildHistogram().Name("latency_seconds").Register(registry);
    auto &pc_hist = pc_hist_family.Add({}, bounds);

    // weir (default instance: the same 11 default buckets)
    weir_instance *w = nullptr;
    ok(weir_instance_new(nullptr, &w), "instance");
    weir_label labels[] = {{"method", "GET"}, {"path", "/a"}};
    weir_counter *wc = nullptr;
    ok(weir_counter_new(w, "requests_total", labels, 2, &wc), "counter");
    weir_histogram *wh = nullptr;
    ok(weir_histogram_new(w, "latency_seconds", nullptr, 0, &wh), "histogram");

    std::printf("| operation (ns per op, median of runs)        | prom-cpp |     weir | ratio |\n");
    std::printf("|----------------------------------------------|---------:|---------:|------:|\n");
    row("counter add through a bound handle",
        ns_per_op(n, [&](long k) { for (long i = 0; i < k; i++) pc_counter.Increment(); }),
        ns_per_op(n, [&](long k) { for (long i = 0; i < k; i++) weir_counter_add(wc, 1); }));
    row("update by name + 2 labels",
        ns_per_op(by_name, [&](long k) {
            for (long i = 0; i < k; i++) pc_family.Add({{"method", "GET"}, {"path", "/a"}}).Increment();
        }),
        ns_per_op(by_name, [&](long k) {
            for (long i = 0; i < k; i++) weir_record_counter(w, "requests_total", labels, 2, 1.0);
        }));
    row("histogram observe (11 buckets)",
        ns_per_op(n, [&](long k) { for (long i = 0; i < k; i++) pc_hist.Observe(0.3); }),
        ns_per_op(n, [&](long k) { for (long i = 0; i < k; i++) weir_histogram_observe(wh, 0.3); }));
    row("two threads on one counter (per op, per thread)",
        two_threads(n / 2, [&](long k) { for (long i = 0; i < k; i++) pc_counter.Increment(); }),
        two_threads(n / 2, [&](long k) { for (long i = 0; i < k; i++) weir_counter_add(wc, 1); }));

    // Flush of 10k updated handles, encoded as Prometheus text.
    std::vector<weir_counter *> many;
    std::vector<std::string> ids;
    for (int i = 0; i < 10000; i++) ids.push_back(std::to_string(i));
    for (int i = 0; i < 10000; i++) {
        weir_label l[] = {{"id", ids[i].c_str()}};
        weir_counter *c = nullptr;
        ok(weir_counter_new(w, "flush_bench_total", l, 1, &c), "flush counter");
        many.push_back(c);
    }
    double flush_us = ns_per_op(1, [&](long k) {
        for (long r = 0; r < k; r++) {
            for (auto *c : many) weir_counter_add(c, 1);
            uint8_t *buf = nullptr;
            size_t len = 0;
            ok(weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len), "flush");
            weir_buffer_free(buf, len);
        }
    }, 9) / 1000.0;
    double update_us = ns_per_op(1, [&](long k) {
        for (long r = 0; r < k; r++) for (auto *c : many) weir_counter_add(c, 1);
    }, 9) / 1000.0;
    std::printf("\nflush of 10k updated handles as Prometheus text: %.0f us (of which updating them: %.0f us)\n",
                flush_us, update_us);
    for (auto *c : many) weir_counter_free(c);
    weir_counter_free(wc);
    weir_histogram_free(wh);
    weir_instance_free(w);
    return 0;
}
