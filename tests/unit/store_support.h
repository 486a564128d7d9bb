// Helpers shared by the store's unit tests.
#pragma once

#include <chrono>
#include <string>

#include <catch2/catch.hpp>

#include "store/store.h"
#include "test_support.h"

namespace vpnmeter::testing {

inline StoreOptions options_in(const TempDir& dir, const std::string& timezone = "UTC")
{
    StoreOptions options;
    options.path = dir.path() + "/store";
    options.timezone = timezone;
    options.initial_map_size = 1 << 20;
    return options;
}

inline Store open_store(const StoreOptions& options)
{
    auto store = Store::open(options);
    if (!store) FAIL("open " << options.path << ": " << store.error().message());
    return std::move(store).value();
}

template <class T> T must(Result<T> result)
{
    if (!result) FAIL(result.error().message());
    return std::move(result).value();
}

inline void must_commit(Store& store, const CycleCommit& cycle)
{
    auto committed = store.commit(cycle);
    if (!committed) FAIL("commit: " << committed.error().message());
}

// Unix seconds of a UTC wall-clock time.
inline int64_t utc(int y, unsigned m, unsigned d, int h = 0, int mi = 0, int s = 0)
{
    using namespace std::chrono;
    const auto t = sys_days{year{y} / month{m} / day{d}} + hours{h} + minutes{mi} + seconds{s};
    return duration_cast<seconds>(t.time_since_epoch()).count();
}

} // namespace vpnmeter::testing
