// Helpers shared by the store's unit tests.
#pragma once

#include <lmdb.h>

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

// Writes one record straight into a database of the LMDB environment at
// `path`, as another release (or damage) would have left it.
inline void put_raw(const std::string& path, const char* db, const std::string& key, const std::string& value)
{
    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_set_maxdbs(env, 16) == 0);
    REQUIRE(mdb_env_open(env, path.c_str(), 0, 0600) == 0);
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
    MDB_dbi dbi = 0;
    REQUIRE(mdb_dbi_open(txn, db, MDB_CREATE, &dbi) == 0);
    MDB_val k{key.size(), const_cast<char*>(key.data())};
    MDB_val v{value.size(), const_cast<char*>(value.data())};
    REQUIRE(mdb_put(txn, dbi, &k, &v, 0) == 0);
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
}

// One record as it is on disk ("" if there is none).
inline std::string get_raw(const std::string& path, const char* db, const std::string& key)
{
    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_set_maxdbs(env, 16) == 0);
    REQUIRE(mdb_env_open(env, path.c_str(), MDB_RDONLY, 0600) == 0);
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) == 0);
    MDB_dbi dbi = 0;
    std::string value;
    if (mdb_dbi_open(txn, db, 0, &dbi) == 0) {
        MDB_val k{key.size(), const_cast<char*>(key.data())};
        MDB_val v{};
        if (mdb_get(txn, dbi, &k, &v) == 0) value.assign(static_cast<const char*>(v.mv_data), v.mv_size);
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return value;
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
