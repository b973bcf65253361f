// weir from C++: RAII ownership of the C handles, std::thread workers, exact values
// checked in the Prometheus text of a flush.
//
// Build (from the repository root, after `cargo build --release -p weir-ffi`):
//   g++ -std=c++17 -Wall -Wextra -Iinclude examples/cpp/threads.cpp
//     target/release/libweir_ffi.a -lpthread -ldl -lm -o threads_cpp
// Exits 0 and prints "ok" when every value is exact.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "weir.h"

namespace {

// Turns a failed status into an exception carrying weir_last_error().
void check(weir_status st, const char *what) {
    if (st != WEIR_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": status " + std::to_string(st) + ": " +
                                 weir_last_error());
    }
}

struct InstanceFree { void operator()(weir_instance *p) const { weir_instance_free(p); } };
struct CounterFree { void operator()(weir_counter *p) const { weir_counter_free(p); } };
struct HistogramFree { void operator()(weir_histogram *p) const { weir_histogram_free(p); } };
using Instance = std::unique_ptr<weir_instance, InstanceFree>;
using Counter = std::unique_ptr<weir_counter, CounterFree>;
using Histogram = std::unique_ptr<weir_histogram, HistogramFree>;

Counter counter(const Instance &w, const char *name, const std::vector<weir_label> &labels) {
    weir_counter *c = nullptr;
    check(weir_counter_new(w.get(), name, labels.data(), labels.size(), &c), name);
    return Counter(c);
}

// One flush as Prometheus text, the buffer given back to weir before returning.
std::string flush_text(const Instance &w) {
    uint8_t *buf = nullptr;
    size_t len = 0;
    check(weir_flush(w.get(), WEIR_FORMAT_PROMETHEUS_TEXT, &buf, &len), "flush");
    std::string text(reinterpret_cast<const char *>(buf), len);
    weir_buffer_free(buf, len);
    return text;
}

// The value on the line `series <value>`; NaN when absent.
double value_of(const std::string &text, const std::string &series) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        if (line.compare(0, series.size(), series) == 0 && line.size() > series.size() &&
            line[series.size()] == ' ') {
            return std::strtod(line.c_str() + series.size() + 1, nullptr);
        }
    }
    return std::strtod("nan", nullptr);
}

int failures = 0;

void expect_value(const std::string &text, const std::string &series, double want) {
    double got = value_of(text, series);
    if (got != want) {
        std::fprintf(stderr, "FAIL %s: %g, want %g in:\n%s\n", series.c_str(), got, want, text.c_str());
        failures++;
    }
}

}  // namespace

int main() {
    try {
        weir_instance *raw = nullptr;
        check(weir_instance_new(nullptr, &raw), "instance");
        Instance w(raw);

        constexpr int threads = 4;
        constexpr int rounds = 50000;
        // One counter per worker plus one they share; labels in two different orders
        // resolve to the same shared series.
        Counter shared = counter(w, "jobs_total", {{"queue", "mail"}, {"kind", "send"}});
        weir_histogram *h = nullptr;
        check(weir_histogram_new(w.get(), "job_seconds", nullptr, 0, &h), "histogram");
        Histogram seconds(h);

        std::vector<std::thread> workers;
        for (int t = 0; t < threads; t++) {
            workers.emplace_back([&w, &shared, &seconds, t] {
                std::string id = std::to_string(t);
                Counter mine = counter(w, "worker_jobs_total", {{"worker", id.c_str()}});
                Counter same = counter(w, "jobs_total", {{"kind", "send"}, {"queue", "mail"}});
                for (int i = 0; i < rounds; i++) {
                    check(weir_counter_add(shared.get(), 1), "shared add");
                    check(weir_counter_add(same.get(), 2), "same add");
                    check(weir_counter_add(mine.get(), 1), "own add");
                    if (i % 10 == 0) check(weir_histogram_observe(seconds.get(), 3.0), "observe");
                }
            });
        }
        for (auto &t : workers) t.join();

        std::string text = flush_text(w);
        expect_value(text, "jobs_total{kind=\"send\",queue=\"mail\"}", threads * rounds * 3.0);
        for (int t = 0; t < threads; t++) {
            expect_value(text, "worker_jobs_total{worker=\"" + std::to_string(t) + "\"}", rounds);
        }
        expect_value(text, "job_seconds_count", threads * (rounds / 10));
        expect_value(text, "job_seconds_sum", threads * (rounds / 10) * 3.0);
        expect_value(text, "job_seconds_bucket{le=\"2.5\"}", 0);
        expect_value(text, "job_seconds_bucket{le=\"5\"}", threads * (rounds / 10));
        check(weir_instance_close(w.get(), 1000), "close");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "FAIL: %s\n", e.what());
        return 1;
    }
    if (failures) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("ok\n");
    return 0;
}
