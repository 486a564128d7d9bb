#include "store/lmdb.h"

namespace vpnmeter::lmdb {

Error error(std::string context, int rc)
{
    if (rc > 0) return Error{std::move(context), rc};
    return Error{context + ": " + mdb_strerror(rc), 0};
}

Result<Env> Env::create()
{
    MDB_env* env = nullptr;
    if (int rc = mdb_env_create(&env); rc != 0) return error("create LMDB environment", rc);
    return Env(env);
}

uint64_t Env::map_size() const
{
    MDB_envinfo info{};
    mdb_env_info(env_, &info);
    return info.me_mapsize;
}

void Env::reset()
{
    if (env_) mdb_env_close(env_);
    env_ = nullptr;
}

Result<Txn> Txn::begin(MDB_env* env, unsigned flags, int* rc_out)
{
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env, nullptr, flags, &txn);
    if (rc_out) *rc_out = rc;
    if (rc != 0) return error(flags & MDB_RDONLY ? "begin read transaction" : "begin write transaction", rc);
    return Txn(txn);
}

Status Txn::check(int rc, std::string context)
{
    if (rc == 0) return ok();
    if (failed_rc_ == 0) failed_rc_ = rc;
    return error(std::move(context), rc);
}

Status Txn::commit()
{
    // LMDB frees the transaction whether or not the commit succeeds.
    MDB_txn* txn = std::exchange(txn_, nullptr);
    return check(mdb_txn_commit(txn), "commit");
}

void Txn::abort()
{
    if (txn_) mdb_txn_abort(std::exchange(txn_, nullptr));
}

Result<std::optional<std::string_view>> Txn::get(MDB_dbi dbi, std::string_view key) const
{
    MDB_val k = val(key);
    MDB_val v{};
    int rc = mdb_get(txn_, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return std::optional<std::string_view>();
    if (rc != 0) return error("read", rc);
    return std::optional<std::string_view>(view(v));
}

Status Txn::put(MDB_dbi dbi, std::string_view key, std::string_view value)
{
    MDB_val k = val(key);
    MDB_val v = val(value);
    return check(mdb_put(txn_, dbi, &k, &v, 0), "write");
}

Status Txn::del(MDB_dbi dbi, std::string_view key)
{
    MDB_val k = val(key);
    int rc = mdb_del(txn_, dbi, &k, nullptr);
    if (rc == MDB_NOTFOUND) return ok();
    return check(rc, "delete");
}

Result<Cursor> Cursor::open(const Txn& txn, MDB_dbi dbi)
{
    MDB_cursor* cursor = nullptr;
    if (int rc = mdb_cursor_open(txn.get(), dbi, &cursor); rc != 0) return error("open cursor", rc);
    return Cursor(cursor);
}

Result<std::optional<Cursor::Entry>> Cursor::move(MDB_cursor_op op, std::string_view key)
{
    MDB_val k = val(key);
    MDB_val v{};
    int rc = mdb_cursor_get(cursor_, &k, &v, op);
    if (rc == MDB_NOTFOUND) return std::optional<Entry>();
    if (rc != 0) return error("read", rc);
    return std::optional<Entry>(Entry{view(k), view(v)});
}

Result<WriteCursor> WriteCursor::open(Txn& txn, MDB_dbi dbi)
{
    auto cursor = Cursor::open(txn, dbi);
    if (!cursor) return cursor.error();
    return WriteCursor(txn, std::move(cursor.value()));
}

Result<std::optional<std::string_view>> WriteCursor::step_to(std::string_view key)
{
    if (!written_) return std::optional<std::string_view>();
    MDB_val k{}, v{};
    int rc = mdb_cursor_get(cursor_.cursor_, &k, &v, MDB_NEXT);
    if (rc == MDB_NOTFOUND) return std::optional<std::string_view>();
    if (rc != 0) return txn_->check(rc, "read").error();
    if (view(k) != key) return std::optional<std::string_view>();
    return std::optional<std::string_view>(view(v));
}

Status WriteCursor::write(std::string_view key, std::string_view value, unsigned flags)
{
    MDB_val k = val(key);
    MDB_val v = val(value);
    auto written = txn_->check(mdb_cursor_put(cursor_.cursor_, &k, &v, flags), "write");
    written_ = bool(written);
    return written;
}

} // namespace vpnmeter::lmdb
