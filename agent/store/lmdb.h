// Move-only owners for LMDB handles, and LMDB errors as values.
#pragma once

#include <lmdb.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "result.h"

namespace vpnmeter::lmdb {

// LMDB returns errno values and its own negative codes; Error::code carries
// only the former, the latter are spelled out in the context.
Error error(std::string context, int rc);

inline MDB_val val(std::string_view bytes)
{
    return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}
inline std::string_view view(const MDB_val& v)
{
    return {static_cast<const char*>(v.mv_data), v.mv_size};
}

class Env {
public:
    Env() = default;
    explicit Env(MDB_env* env) : env_(env) {}
    Env(Env&& other) noexcept : env_(std::exchange(other.env_, nullptr)) {}
    Env& operator=(Env&& other) noexcept
    {
        if (this != &other) {
            reset();
            env_ = std::exchange(other.env_, nullptr);
        }
        return *this;
    }
    Env(const Env&) = delete;
    Env& operator=(const Env&) = delete;
    ~Env() { reset(); }

    static Result<Env> create();
    MDB_env* get() const { return env_; }
    uint64_t map_size() const;

private:
    void reset();
    MDB_env* env_ = nullptr;
};

// A transaction; aborted on destruction unless committed. Its cursors must
// be gone before it commits or is destroyed.
class Txn {
public:
    Txn() = default;
    Txn(Txn&& other) noexcept : txn_(std::exchange(other.txn_, nullptr)), failed_rc_(other.failed_rc_) {}
    Txn& operator=(Txn&& other) noexcept
    {
        if (this != &other) {
            abort();
            txn_ = std::exchange(other.txn_, nullptr);
            failed_rc_ = other.failed_rc_;
        }
        return *this;
    }
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;
    ~Txn() { abort(); }

    // flags: 0 (write) or MDB_RDONLY. `rc` receives LMDB's code, so the
    // caller can tell MDB_MAP_RESIZED (another process grew the map: adopt
    // the new size, retry) from other failures.
    static Result<Txn> begin(MDB_env* env, unsigned flags, int* rc = nullptr);

    MDB_txn* get() const { return txn_; }
    Status commit();
    void abort();

    // nullopt when the key is absent. The view points into the map: valid
    // until the transaction ends or (write) the next change to that key.
    Result<std::optional<std::string_view>> get(MDB_dbi dbi, std::string_view key) const;
    Status put(MDB_dbi dbi, std::string_view key, std::string_view value);
    // Absent keys are fine.
    Status del(MDB_dbi dbi, std::string_view key);

    // The LMDB code of the first failed put/del/commit (0: none). After a
    // failed write LMDB refuses further work in the transaction, so this is
    // what decides whether a retry with a bigger map can help.
    int failed_rc() const { return failed_rc_; }

private:
    friend class WriteCursor;
    explicit Txn(MDB_txn* txn) : txn_(txn) {}
    Status check(int rc, std::string context);
    MDB_txn* txn_ = nullptr;
    int failed_rc_ = 0;
};

class Cursor {
public:
    Cursor(Cursor&& other) noexcept : cursor_(std::exchange(other.cursor_, nullptr)) {}
    Cursor& operator=(Cursor&&) = delete;
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;
    ~Cursor()
    {
        if (cursor_) mdb_cursor_close(cursor_);
    }

    static Result<Cursor> open(const Txn& txn, MDB_dbi dbi);

    struct Entry {
        std::string_view key;
        std::string_view value;
    };
    // MDB_FIRST, MDB_NEXT, MDB_SET_RANGE (with `key`) ...: nullopt past the end.
    Result<std::optional<Entry>> move(MDB_cursor_op op, std::string_view key = {});

private:
    friend class WriteCursor;
    explicit Cursor(MDB_cursor* cursor) : cursor_(cursor) {}
    MDB_cursor* cursor_ = nullptr;
};

// Writes through one cursor, keys in ascending order. When the key written
// next is the record after the last one written, the cursor steps there
// (a cycle rewrites long runs of neighbours: ~40% of the write at 100,000
// sessions); otherwise LMDB searches from the cursor's leaf page instead of
// from the root. Both cost a fraction of separate mdb_get/mdb_put calls.
class WriteCursor {
public:
    static Result<WriteCursor> open(Txn& txn, MDB_dbi dbi);

    Status put(std::string_view key, std::string_view value)
    {
        auto next = step_to(key);
        if (!next) return next.error();
        return write(key, value, *next ? MDB_CURRENT : 0);
    }
    // Adds to the value under `key`: `update` gets the stored value (nullopt
    // if none) and returns the new one.
    template <class Update>
    Status update(std::string_view key, Update&& update)
    {
        auto next = step_to(key);
        if (!next) return next.error();
        std::optional<std::string_view> stored = *next;
        if (!stored) {
            auto found = cursor_.move(MDB_SET_KEY, key);
            if (!found) return found.error();
            if (*found) stored = (*found)->value;
        }
        auto value = update(stored);
        if (!value) return value.error();
        return write(key, *value, stored ? MDB_CURRENT : 0);
    }

private:
    WriteCursor(Txn& txn, Cursor cursor) : txn_(&txn), cursor_(std::move(cursor)) {}
    // The value under `key` if it is the record after the last one written
    // (the cursor then stands on it), nullopt otherwise: a cycle rewrites
    // runs of neighbouring records, and a step costs less than a search.
    Result<std::optional<std::string_view>> step_to(std::string_view key);
    Status write(std::string_view key, std::string_view value, unsigned flags);
    Txn* txn_;
    Cursor cursor_;
    bool written_ = false; // the cursor stands on the last record written
};

} // namespace vpnmeter::lmdb
