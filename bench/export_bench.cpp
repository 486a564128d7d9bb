// vpnmeter_bench_export: how fast `vpnmeter export` streams a big store.
//
// Fills a fresh store (in a temporary directory, removed at exit) with
// --users users, each with hour buckets for --days days, then exports it by
// hour and by day, CSV and JSON, to /dev/null, and prints rows per second.
// Exits non-zero on errors only. No privileges needed.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "store/store.h"
#include "usage_export.h"

using namespace vpnmeter;

int main(int argc, char** argv)
{
    CLI::App app{"vpnmeter_bench_export: rows per second of `vpnmeter export` from a filled store"};
    uint32_t users = 2000, days = 31;
    app.add_option("--users", users, "users in the store")->capture_default_str();
    app.add_option("--days", days, "days of hour buckets per user")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    std::string dir = "/tmp/vpnmeter-bench-export-XXXXXX";
    if (!mkdtemp(dir.data())) return std::perror("mkdtemp"), 1;
    struct Cleanup {
        std::string path;
        ~Cleanup() { std::filesystem::remove_all(path); }
    } cleanup{dir};

    StoreOptions options;
    options.path = dir + "/store";
    auto store = Store::open(options);
    if (!store) return std::fprintf(stderr, "%s\n", store.error().message().c_str()), 1;
    std::vector<std::string> names;
    for (uint32_t u = 0; u < users; ++u) names.push_back("user-" + std::to_string(u));
    const int64_t start = 1'730'419'200; // 2024-11-01T00:00:00Z
    const auto fill_began = std::chrono::steady_clock::now();
    for (uint32_t hour = 0; hour < days * 24; ++hour) { // one commit per hour: every user active
        CycleCommit cycle;
        cycle.time = start + int64_t{hour} * 3600;
        for (const auto& name : names) cycle.user_usage[name] = {{10, 12'345}, {20, 678'901}};
        if (auto status = store->commit(cycle); !status)
            return std::fprintf(stderr, "commit: %s\n", status.error().message().c_str()), 1;
    }
    std::printf("filled %u users x %u days of hours in %.1f s; store %.1f MiB\n", users, days,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_began).count(),
                static_cast<double>(std::filesystem::file_size(options.path + "/data.mdb")) / (1 << 20));

    auto listed = store->users();
    if (!listed || listed->size() != users) return std::fprintf(stderr, "users(): wrong answer\n"), 1;
    std::printf("%-6s %-5s %12s %10s %14s\n", "by", "fmt", "rows", "seconds", "rows/s");
    for (auto granularity : {Granularity::Hour, Granularity::Day}) {
        for (auto format : {ExportFormat::csv, ExportFormat::json}) {
            std::ofstream sink("/dev/null");
            size_t rows_per_user = granularity == Granularity::Hour ? days * 24 : days;
            const auto began = std::chrono::steady_clock::now();
            auto status =
                export_usage(store.value(), listed.value(), {start, start + int64_t{days} * 86400, granularity},
                             format, sink);
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
            if (!status) return std::fprintf(stderr, "export: %s\n", status.error().message().c_str()), 1;
            const double rows = static_cast<double>(rows_per_user) * users;
            std::printf("%-6s %-5s %12.0f %10.2f %14.0f\n", to_string(granularity),
                        format == ExportFormat::csv ? "csv" : "json", rows, seconds, rows / seconds);
        }
    }
    return 0;
}
