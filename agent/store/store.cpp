// Opening the store, its schema, and the two writes: commit() and prune().
// Reads are in snapshot.cpp; the byte layout is in encoding.h.
#include "store/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <ctime>
#include <limits>
#include <map>
#include <set>

#include <spdlog/spdlog.h>

#include "store/encoding.h"
#include "store/store_impl.h"

namespace vpnmeter {
namespace {

constexpr unsigned kMaxDatabases = 16; // 15 used (and "usage" of schema 2 while migrating)
constexpr int kMaxResizedRetries = 3;
constexpr auto kResizeWait = std::chrono::seconds(5);
constexpr const char* kSchemaVersionKey = "schema_version";
constexpr const char* kIdentityKey = "identity";
constexpr std::array kGranularities{Granularity::Hour, Granularity::Day, Granularity::Month};

struct NamedDatabase {
    const char* name;
    std::optional<MDB_dbi> Databases::*member;
};
constexpr std::array kDatabases{
    NamedDatabase{"meta", &Databases::meta},
    NamedDatabase{"sessions", &Databases::sessions},
    NamedDatabase{"sessions_active", &Databases::sessions_active},
    NamedDatabase{"session_totals", &Databases::session_totals},
    NamedDatabase{"usage_by_time", &Databases::usage},
    NamedDatabase{"users", &Databases::users},
    NamedDatabase{"unattributed", &Databases::unattributed},
    NamedDatabase{"checkpoint_addresses", &Databases::checkpoint_addresses},
    NamedDatabase{"checkpoint_owners", &Databases::checkpoint_owners},
    NamedDatabase{"checkpoint_interfaces", &Databases::checkpoint_interfaces},
    NamedDatabase{"checkpoint_meta", &Databases::checkpoint_meta},
    NamedDatabase{"quota_usage", &Databases::quota_usage},
    NamedDatabase{"alerts_fired", &Databases::alerts_fired},
    NamedDatabase{"grants", &Databases::grants},
    NamedDatabase{"stats_checkpoints", &Databases::stats_checkpoints},
};

uint64_t page_size()
{
    return static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint64_t round_up_to_page(uint64_t size)
{
    return (size + page_size() - 1) / page_size() * page_size();
}

std::string mib(uint64_t bytes)
{
    return std::to_string(bytes >> 20) + " MiB";
}

// The Traffic stored (if any) plus `increment`, encoded into `out`.
Result<std::string_view> add_traffic(std::optional<std::string_view> stored, const Traffic& increment, std::string& out)
{
    Traffic total;
    if (stored) {
        auto decoded = encoding::decode_traffic(*stored);
        if (!decoded) return Error{"stored traffic value is " + std::to_string(stored->size()) + " bytes, not 32"};
        total = *decoded;
    }
    total += increment;
    encoding::encode(total, out);
    return std::string_view(out);
}

// Adds `increment` to the Traffic stored under `key`.
Status add_traffic(lmdb::WriteCursor& cursor, std::string_view key, const Traffic& increment)
{
    std::string value;
    return cursor.update(key, [&](std::optional<std::string_view> stored) { return add_traffic(stored, increment, value); });
}

// Schema 2: session records in the binary encoding (encoding.cpp), which
// the cycle writes ~10x faster than version 1's CBOR. Every record is
// rewritten, so a store is all one kind; and the version bump makes a build
// that knows only schema 1 refuse the store clearly rather than fail on the
// first new record.
Status migrate_1_to_2(lmdb::Txn& txn, const Databases& dbs)
{
    auto cursor = lmdb::Cursor::open(txn, *dbs.sessions);
    if (!cursor) return cursor.error();
    std::vector<std::pair<std::string, std::string>> rewritten;
    size_t unreadable = 0;
    auto entry = cursor->move(MDB_FIRST);
    for (; entry && *entry; entry = cursor->move(MDB_NEXT)) {
        auto session = encoding::decode_session((*entry)->value);
        if (!session) { // kept as it is: reads report it, as before
            ++unreadable;
            continue;
        }
        rewritten.emplace_back((*entry)->key, encoding::encode(*session));
    }
    if (!entry) return entry.error();
    for (const auto& [key, value] : rewritten)
        if (auto put = txn.put(*dbs.sessions, key, value); !put) return prefixed("rewrite session " + key, put.error());
    spdlog::info("store: schema 1 -> 2: {} session records rewritten in the binary format{}", rewritten.size(),
                 unreadable ? fmt::format(", {} unreadable ones left as they were", unreadable) : "");
    return ok();
}

// Schema 3: usage keyed time-major ("usage" -> "usage_by_time") with a
// users list beside it, and the active sessions in a database of their own.
// Both so that what a cycle rewrites is contiguous: in schema 2 each active
// user's buckets and each active session sat among their history, and a
// cycle dirtied a page or more per active client once a store had a few
// days in it (docs/benchmarks.md, "history").
Status migrate_2_to_3(lmdb::Txn& txn, const Databases& dbs)
{
    MDB_dbi old_usage = 0;
    const int opened = mdb_dbi_open(txn.get(), "usage", 0, &old_usage);
    if (opened != 0 && opened != MDB_NOTFOUND) return lmdb::error("open database usage", opened);
    if (opened == 0) {
        MDB_stat stat{};
        if (int rc = mdb_stat(txn.get(), old_usage, &stat); rc != 0) return lmdb::error("count usage buckets", rc);
        spdlog::info("store: schema 2 -> 3: re-keying {} usage buckets by time, in one transaction", stat.ms_entries);
        size_t buckets = 0;
        std::string last_user;
        auto copied = scan(txn, old_usage, {}, [&](auto key, auto value) -> Result<bool> {
            auto decoded = encoding::decode_schema2_usage_key(key);
            if (!decoded) return corrupt("usage key of schema 2");
            if (auto put = txn.put(*dbs.usage, encoding::usage_key(decoded->granularity, decoded->start, decoded->user),
                                   value);
                !put)
                return put.error();
            if (decoded->user != last_user) { // a user's keys are contiguous in schema 2
                last_user = decoded->user;
                if (auto put = txn.put(*dbs.users, encoding::user_key(last_user), {}); !put) return put.error();
            }
            if (++buckets % 1'000'000 == 0)
                spdlog::info("store: schema 2 -> 3: {} of {} usage buckets re-keyed", buckets, stat.ms_entries);
            return true;
        });
        if (!copied) return prefixed("re-key usage", copied.error());
        if (int rc = mdb_drop(txn.get(), old_usage, 1); rc != 0) return lmdb::error("drop the schema 2 usage", rc);
        spdlog::info("store: schema 2 -> 3: {} usage buckets re-keyed by time", buckets);
    }
    std::vector<std::pair<std::string, std::string>> active;
    auto found = scan(txn, *dbs.sessions, {}, [&](auto key, auto value) -> Result<bool> {
        auto session = encoding::decode_session(value);
        if (session && session->active()) active.emplace_back(key, value);
        return true;
    });
    if (!found) return prefixed("find active sessions", found.error());
    for (const auto& [id, record] : active) {
        if (auto put = txn.put(*dbs.sessions_active, id, record); !put)
            return prefixed("move session " + id, put.error());
        if (auto del = txn.del(*dbs.sessions, id); !del) return prefixed("move session " + id, del.error());
    }
    spdlog::info("store: schema 2 -> 3: {} active sessions moved apart from the closed ones", active.size());
    return ok();
}

// Schema 4: address checkpoints in the compact encoding (encoding.h), which
// at 1,000,000 addresses is ~40% fewer pages for each cycle to rewrite.
// The old keys are in ClientKey order, as the new ones: rewritten in order.
Status migrate_3_to_4(lmdb::Txn& txn, const Databases& dbs)
{
    std::vector<std::pair<std::string, std::string>> rewritten;
    auto read = scan(txn, *dbs.checkpoint_addresses, {}, [&](auto key, auto value) -> Result<bool> {
        auto client = encoding::decode_schema3_client_key(key);
        auto checkpoint = encoding::decode_schema3_address_checkpoint(value);
        if (!client || !checkpoint) return corrupt("address checkpoint of schema 3");
        rewritten.emplace_back(encoding::encode(*client), encoding::encode(*checkpoint));
        return true;
    });
    if (!read) return prefixed("read address checkpoints", read.error());
    if (int rc = mdb_drop(txn.get(), *dbs.checkpoint_addresses, 0); rc != 0)
        return lmdb::error("empty the schema 3 address checkpoints", rc);
    auto cursor = lmdb::WriteCursor::open(txn, *dbs.checkpoint_addresses);
    if (!cursor) return cursor.error();
    for (const auto& [key, value] : rewritten)
        if (auto put = cursor->put(key, value); !put) return prefixed("rewrite address checkpoints", put.error());
    spdlog::info("store: schema 3 -> 4: {} address checkpoints rewritten in the compact encoding", rewritten.size());
    return ok();
}

// Schema 5: a cycle adds to its hour bucket only, and the hour is added to
// its day and month once it is over (roll_up), instead of three buckets
// rewritten per user per cycle. Schema 4 added every hour to them, the
// current one too: that one counts as rolled up, and the next is the first
// rolled up later.
Status migrate_4_to_5(lmdb::Txn& txn, const Databases& dbs, const BucketCalendar& calendar, int64_t now)
{
    const int64_t next_hour = calendar.start(calendar.start(now, Granularity::Hour) + 3600, Granularity::Hour);
    if (auto put = txn.put(*dbs.meta, kRolledToKey, encoding::encode_i64(next_hour)); !put) return put;
    spdlog::info("store: schema 4 -> 5: hours from {} on are rolled up into days and months once over", next_hour);
    return ok();
}

// Schema 7: an address's owner (a session id, ~30 bytes) in a database of
// its own, written when it changes, instead of beside the raw counters that
// every cycle rewrites: at 100,000 moving clients ~18% fewer pages a cycle.
Status migrate_6_to_7(lmdb::Txn& txn, const Databases& dbs)
{
    std::vector<std::pair<std::string, AddressCheckpoint>> split;
    auto read = scan(txn, *dbs.checkpoint_addresses, {}, [&](auto key, auto value) -> Result<bool> {
        auto checkpoint = encoding::decode_address_checkpoint(value);
        if (!checkpoint) return corrupt("address checkpoint of schema 6");
        split.emplace_back(key, std::move(*checkpoint));
        return true;
    });
    if (!read) return prefixed("read address checkpoints", read.error());
    auto addresses = lmdb::WriteCursor::open(txn, *dbs.checkpoint_addresses);
    if (!addresses) return addresses.error();
    auto owners = lmdb::WriteCursor::open(txn, *dbs.checkpoint_owners);
    if (!owners) return owners.error();
    std::string value;
    size_t owned = 0;
    for (const auto& [key, checkpoint] : split) {
        encoding::encode_address_checkpoint(checkpoint.raw, {}, value);
        if (auto put = addresses->put(key, value); !put) return prefixed("rewrite address checkpoints", put.error());
        if (checkpoint.owner.empty()) continue;
        if (auto put = owners->put(key, checkpoint.owner); !put) return prefixed("move address owners", put.error());
        ++owned;
    }
    spdlog::info("store: schema 6 -> 7: {} address checkpoints rewritten, the owners of {} moved apart", split.size(),
                 owned);
    return ok();
}

// Upgrades a store written by an older vpnmeter, inside the open's write
// transaction (all or nothing). Each step takes version N to N + 1.
Status migrate(lmdb::Txn& txn, const Databases& dbs, uint32_t from, const BucketCalendar& calendar, int64_t now)
{
    for (uint32_t version = from; version < kSchemaVersion; ++version) {
        Status step = ok();
        switch (version) {
        case 1:
            step = migrate_1_to_2(txn, dbs);
            break;
        case 2:
            step = migrate_2_to_3(txn, dbs);
            break;
        case 3:
            step = migrate_3_to_4(txn, dbs);
            break;
        case 4:
            step = migrate_4_to_5(txn, dbs, calendar, now);
            break;
        case 5:
            break; // schema 6 adds a database, empty at first
        case 6:
            step = migrate_6_to_7(txn, dbs);
            break;
        default:
            return Error{"no migration from schema version " + std::to_string(version)};
        }
        if (!step) return prefixed("migrate the store from schema version " + std::to_string(version), step.error());
    }
    return ok();
}

Status check_version_known(uint32_t version, const std::string& path)
{
    if (version <= kSchemaVersion) return ok();
    return Error{"the store at " + path + " has schema version " + std::to_string(version) +
                 ", newer than this vpnmeter understands (" + std::to_string(kSchemaVersion) +
                 "): it was written by a newer release; upgrade vpnmeter"};
}

Result<uint32_t> read_schema_version(const lmdb::Txn& txn, MDB_dbi meta)
{
    auto stored = txn.get(meta, kSchemaVersionKey);
    if (!stored) return prefixed("read schema version", stored.error());
    if (!*stored) return uint32_t{0};
    auto version = encoding::decode_u32(**stored);
    if (!version) return Error{"the store's schema version record is corrupt"};
    return *version;
}

Error no_store(const std::string& path)
{
    return Error{"no store at " + path + " (has vpnmeterd run with storage.path=" + path + "?)"};
}

Status prepare_directory(const StoreOptions& options)
{
    const std::string data_file = options.path + "/data.mdb";
    struct stat st {};
    if (options.read_only) {
        if (stat(data_file.c_str(), &st) != 0) {
            if (errno == ENOENT || errno == ENOTDIR) return no_store(options.path);
            return os_error("open store " + data_file);
        }
        // An empty data file: the daemon died creating it, before the store existed.
        return st.st_size > 0 ? ok() : Status(no_store(options.path));
    }
    if (mkdir(options.path.c_str(), 0700) == 0) return ok();
    if (errno != EEXIST) return os_error("create store directory " + options.path);
    if (stat(options.path.c_str(), &st) != 0) return os_error("open store directory " + options.path);
    if (!S_ISDIR(st.st_mode)) return Error{"storage.path " + options.path + " exists and is not a directory"};
    return ok();
}

// Directory -> the process holding it open. A child created by fork()
// inherits the parent's entries; they are not its own (LMDB forbids using
// the parent's environment there, and allows opening a new one).
std::mutex claims_mutex;
std::map<std::pair<uint64_t, uint64_t>, pid_t> claims;

} // namespace

Result<OpenStoreClaim> OpenStoreClaim::claim(const std::string& directory)
{
    struct stat st {};
    if (stat(directory.c_str(), &st) != 0) return os_error("open store directory " + directory);
    const Id id{st.st_dev, st.st_ino};
    std::lock_guard lock(claims_mutex);
    auto [it, inserted] = claims.try_emplace(id, getpid());
    if (!inserted && it->second == getpid())
        return Error{"the store at " + directory +
                     " is already open in this process (LMDB allows one open per process)"};
    it->second = getpid();
    return OpenStoreClaim(id);
}

OpenStoreClaim::~OpenStoreClaim()
{
    if (!id_) return;
    std::lock_guard lock(claims_mutex);
    if (auto it = claims.find(*id_); it != claims.end() && it->second == getpid()) claims.erase(it);
}

// The daemon's open: creates the databases, stamps or migrates the schema.
Status Store::Impl::initialise()
{
    Databases opened;
    uint32_t version = 0;
    auto status = write("initialise store at " + options.path, [&](lmdb::Txn& txn) -> Status {
        for (const auto& db : kDatabases) {
            MDB_dbi dbi = 0;
            if (int rc = mdb_dbi_open(txn.get(), db.name, MDB_CREATE, &dbi); rc != 0)
                return lmdb::error(std::string("open database ") + db.name, rc);
            opened.*db.member = dbi;
        }
        auto stored = read_schema_version(txn, *opened.meta);
        if (!stored) return stored.error();
        version = *stored;
        if (auto known = check_version_known(version, options.path); !known) return known;
        if (version == kSchemaVersion) return ok();
        if (version != 0) {
            const int64_t now = static_cast<int64_t>(std::time(nullptr));
            if (auto migrated = migrate(txn, opened, version, calendar, now); !migrated) return migrated;
        }
        version = kSchemaVersion;
        return txn.put(*opened.meta, kSchemaVersionKey, encoding::encode_u32(kSchemaVersion));
    });
    if (!status) return status;
    dbs = opened;
    schema_version = version;
    return ok();
}

// The CLI's open: finds what exists, changes nothing.
Status Store::Impl::attach()
{
    auto snapshot = begin_read();
    if (!snapshot) return snapshot.error();
    lmdb::Txn& txn = (*snapshot)->txn;
    Databases found;
    for (const auto& db : kDatabases) {
        MDB_dbi dbi = 0;
        int rc = mdb_dbi_open(txn.get(), db.name, 0, &dbi);
        if (rc == MDB_NOTFOUND) continue;
        if (rc != 0) return lmdb::error(std::string("open database ") + db.name, rc);
        found.*db.member = dbi;
    }
    uint32_t version = 0;
    if (found.meta) {
        auto stored = read_schema_version(txn, *found.meta);
        if (!stored) return stored.error();
        version = *stored;
    }
    if (auto known = check_version_known(version, options.path); !known) return known;
    if (version != 0 && version < kSchemaVersion)
        return Error{"the store at " + options.path + " has schema version " + std::to_string(version) +
                     "; start this release's vpnmeterd once to upgrade it"};
    // Committing a read transaction keeps its database handles open for
    // the environment's lifetime.
    if (auto committed = txn.commit(); !committed) return prefixed("open databases", committed.error());
    dbs = found;
    schema_version = version;
    return ok();
}

Status Store::Impl::resize_map(uint64_t size) const
{
    std::lock_guard gate(resize_gate);
    std::unique_lock lock(map_lock, std::defer_lock);
    if (!lock.try_lock_for(kResizeWait))
        return Error{"resize the store's map: read snapshots in this process stayed open for over 5 s"};
    if (int rc = mdb_env_set_mapsize(env.get(), size); rc != 0)
        return lmdb::error(
            size ? "grow the store's map to " + std::to_string(size) + " bytes" : "adopt the store's new map size", rc);
    return ok();
}

Status Store::Impl::write(const std::string& what, const std::function<Status(lmdb::Txn&)>& apply,
                          StoreFailure* failure)
{
    StoreFailure ignored = StoreFailure::none;
    StoreFailure& why = failure ? *failure : ignored;
    why = StoreFailure::none;
    std::lock_guard writing(write_lock);
    for (int resized = 0;;) {
        int rc = 0;
        Status result = ok();
        {
            std::shared_lock lock(map_lock);
            auto txn = lmdb::Txn::begin(env.get(), 0, &rc);
            if (txn) {
                result = apply(*txn);
                if (result) result = txn->commit();
                if (result) {
                    why = StoreFailure::none;
                    return ok();
                }
                rc = txn->failed_rc();
            } else {
                result = txn.error();
            }
        } // an unfinished transaction is aborted here, before the lock goes

        if (rc == MDB_MAP_RESIZED && resized++ < kMaxResizedRetries) {
            if (auto adopted = resize_map(0); !adopted) {
                why = StoreFailure::other;
                return prefixed(what, adopted.error());
            }
            continue;
        }
        if (rc != MDB_MAP_FULL) {
            why = rc == ENOSPC || rc == EDQUOT ? StoreFailure::disk_full : StoreFailure::other;
            return prefixed(what, result.error());
        }

        why = StoreFailure::map_full;
        const uint64_t size = env.map_size();
        const uint64_t limit = std::max(round_up_to_page(max_map_size.load()), page_size());
        if (size >= limit)
            return Error{what + ": the store at " + options.path + " is full: it needs more than its limit of " +
                         std::to_string(limit) + " bytes (" + mib(limit) + ", storage.map_size); nothing was written"};
        if (auto grown = resize_map(std::min(round_up_to_page(size * 2), limit)); !grown)
            return prefixed(what, grown.error());
    }
}

Result<std::unique_ptr<StoreSnapshotState>> Store::Impl::begin_read() const
{
    for (int resized = 0;; ++resized) {
        auto state = std::make_unique<StoreSnapshotState>();
        resize_gate.lock(); // queue behind a pending resize
        resize_gate.unlock();
        state->map_lock = std::shared_lock(map_lock);
        int rc = 0;
        auto txn = lmdb::Txn::begin(env.get(), MDB_RDONLY, &rc);
        if (txn) {
            state->txn = std::move(*txn);
            state->env = env.get();
            state->dbs = &dbs;
            state->calendar = &calendar;
            return state;
        }
        if (rc != MDB_MAP_RESIZED || resized >= kMaxResizedRetries)
            return prefixed("read store at " + options.path, txn.error());
        state.reset(); // let go of the shared lock: adopting the size needs it exclusively
        if (auto adopted = resize_map(0); !adopted) return adopted.error();
    }
}

Result<Store> Store::open(const StoreOptions& options)
{
    auto calendar = BucketCalendar::load(options.timezone);
    if (!calendar) return calendar.error();
    if (auto prepared = prepare_directory(options); !prepared) return prepared.error();
    auto claim = OpenStoreClaim::claim(options.path);
    if (!claim) return claim.error();

    auto env = lmdb::Env::create();
    if (!env) return env.error();
    if (int rc = mdb_env_set_maxdbs(env->get(), kMaxDatabases); rc != 0) return lmdb::error("set max databases", rc);
    // An existing store keeps the size it has grown to (LMDB reads it from
    // the file); only a new one starts at initial_map_size.
    struct stat st {};
    const bool exists = stat((options.path + "/data.mdb").c_str(), &st) == 0 && st.st_size > 0;
    if (!options.read_only && !exists) {
        if (int rc = mdb_env_set_mapsize(env->get(), round_up_to_page(options.initial_map_size)); rc != 0)
            return lmdb::error("set map size", rc);
    }
    // MDB_NORDAHEAD: a cycle touches scattered pages; read-ahead and fault-around
    // would map their neighbours into the daemon's memory too.
    const unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (options.read_only ? MDB_RDONLY : 0);
    if (int rc = mdb_env_open(env->get(), options.path.c_str(), flags, 0600); rc != 0) {
        if (options.read_only && rc == ENOENT) return no_store(options.path); // emptied since the check
        return lmdb::error("open store at " + options.path, rc);
    }
    // Usage per user is nobody else's business: a new store's files are
    // 0600 (the mode above), and an existing one's are brought back to it
    // (say a copy restored with another umask).
    if (!options.read_only) {
        for (const char* file : {"/data.mdb", "/lock.mdb"}) {
            const std::string name = options.path + file;
            if (stat(name.c_str(), &st) == 0 && (st.st_mode & 077) && chmod(name.c_str(), 0600) != 0)
                return os_error("make " + name + " private (mode 0600)");
        }
    }
    if (!options.read_only && env->map_size() < options.initial_map_size) {
        if (int rc = mdb_env_set_mapsize(env->get(), round_up_to_page(options.initial_map_size)); rc != 0)
            return lmdb::error("set map size", rc);
    }

    auto impl = std::make_unique<Impl>(options, std::move(*calendar), std::move(*claim), std::move(*env));
    auto ready = options.read_only ? impl->attach() : impl->initialise();
    if (!ready) return ready.error();
    return Store(std::move(impl));
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;
Store::~Store() = default;

uint32_t Store::schema_version() const
{
    return impl_->schema_version;
}

uint64_t Store::map_size() const
{
    return impl_->env.map_size();
}

void Store::set_max_map_size(uint64_t size)
{
    impl_->max_map_size = size;
}

uint64_t Store::max_map_size() const
{
    return impl_->max_map_size;
}

SessionTotals totals_of(const Session& session)
{
    return {&session, session.usage, session.source_upload_bytes, session.source_download_bytes};
}

Session with_totals(const SessionTotals& totals)
{
    Session session = *totals.session;
    session.usage = totals.usage;
    session.source_upload_bytes = totals.source_upload_bytes;
    session.source_download_bytes = totals.source_download_bytes;
    return session;
}

const char* to_string(StoreFailure failure)
{
    switch (failure) {
    case StoreFailure::none: return "none";
    case StoreFailure::map_full: return "map_full";
    case StoreFailure::disk_full: return "disk_full";
    case StoreFailure::other: break;
    }
    return "other";
}

int64_t Store::bucket_start(int64_t time, Granularity granularity) const
{
    return impl_->calendar.start(time, granularity);
}

Result<int64_t> read_rolled_to(const lmdb::Txn& txn, MDB_dbi meta)
{
    auto stored = txn.get(meta, kRolledToKey);
    if (!stored) return prefixed("read where usage is rolled up to", stored.error());
    if (!*stored) return std::numeric_limits<int64_t>::min();
    auto rolled = encoding::decode_i64(**stored);
    if (!rolled) return corrupt("the record of where usage is rolled up to");
    return *rolled;
}

namespace {

// Adds the hour buckets starting in [from, to) to their days and months.
// Hours come in (start, user) order: the usual single hour gives each run
// already in key order; several are summed after a sort.
Status roll_up_hours(lmdb::Txn& txn, const Databases& dbs, const BucketCalendar& calendar, int64_t from, int64_t to)
{
    std::array<std::vector<std::pair<std::string, Traffic>>, 2> adds; // day, month
    constexpr std::array kWholes{Granularity::Day, Granularity::Month};
    auto read = scan(txn, *dbs.usage, encoding::usage_key(Granularity::Hour, from, {}),
                     [&](auto key, auto value) -> Result<bool> {
                         const auto bucket = encoding::decode_usage_key(key);
                         if (!bucket) return corrupt("usage key");
                         if (bucket->granularity != Granularity::Hour || bucket->start >= to) return false;
                         const auto traffic = encoding::decode_traffic(value);
                         if (!traffic) return corrupt("usage record of user '" + std::string(bucket->user) + "'");
                         for (size_t i = 0; i < kWholes.size(); ++i)
                             adds[i].emplace_back(
                                 encoding::usage_key(kWholes[i], calendar.start(bucket->start, kWholes[i]), bucket->user),
                                 *traffic);
                         return true;
                     });
    if (!read) return read;
    auto cursor = lmdb::WriteCursor::open(txn, *dbs.usage);
    if (!cursor) return cursor.error();
    for (auto& run : adds) { // days, then months: key order
        auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
        if (!std::is_sorted(run.begin(), run.end(), by_key)) std::stable_sort(run.begin(), run.end(), by_key);
        for (auto it = run.begin(); it != run.end();) {
            Traffic sum;
            auto same = it;
            for (; same != run.end() && same->first == it->first; ++same) sum += same->second;
            if (auto added = add_traffic(*cursor, it->first, sum); !added) return added;
            it = same;
        }
    }
    return ok();
}

} // namespace

Status Store::commit(const CycleCommit& cycle, StoreFailure* failure, std::shared_future<bool> quotas_planned,
                     std::shared_future<bool> rest_planned)
{
    if (failure) *failure = StoreFailure::other;
    if (impl_->options.read_only) return Error{"commit: the store is open read-only"};
    const Databases& dbs = impl_->dbs;
    std::array<int64_t, kGranularities.size()> starts{};
    for (size_t i = 0; i < kGranularities.size(); ++i)
        starts[i] = impl_->calendar.start(cycle.time, kGranularities[i]);
    // A part still planned on another thread: false (or a broken promise)
    // means it never will be, and nothing is written.
    auto ready = [](const std::shared_future<bool>& planned) {
        if (!planned.valid()) return true;
        try {
            return planned.get();
        } catch (const std::future_error&) { // the planning thread gave up
            return false;
        }
    };

    return impl_->write("commit cycle", [&](lmdb::Txn& txn) -> Status {
        // The users' usage first, then their quota records: both may be all
        // that is planned yet. Every write in key order through one cursor
        // per database (see lmdb::WriteCursor).
        // Usage: a cycle adds to its hour; roll_up() adds the hours before
        // to their days and months once, off the cycle (at 100,000 users a
        // day and a month bucket rewritten per user every cycle cost ~50 ms
        // a cycle). An hour already rolled up (the last hour of a schema 4
        // store, or the clock went back) adds to its day and month directly.
        auto rolled = read_rolled_to(txn, *dbs.meta);
        if (!rolled) return rolled.error();
        const int64_t hour = starts[0];
        const size_t runs = hour < *rolled ? kGranularities.size() : 1;
        // A run per granularity, users in byte order within it (the key
        // order). A user without this hour's bucket may be new: listed.
        auto usage_cursor = lmdb::WriteCursor::open(txn, *dbs.usage);
        if (!usage_cursor) return prefixed("store usage", usage_cursor.error());
        std::vector<std::string_view> maybe_new_users;
        std::string bucket_key, bucket;
        for (size_t i = 0; i < runs; ++i) {
            for (const auto& entry : cycle.user_usage) { // not a structured binding: the lambda captures it
                const std::string& user = entry.first;
                const Traffic& increment = entry.second;
                if (increment == Traffic{}) continue; // buckets hold only traffic
                encoding::usage_key(kGranularities[i], starts[i], user, bucket_key);
                auto add = [&](std::optional<std::string_view> stored) -> Result<std::string_view> {
                    if (!stored && kGranularities[i] == Granularity::Hour) maybe_new_users.push_back(user);
                    return add_traffic(stored, increment, bucket);
                };
                auto added = usage_cursor->update(bucket_key, add);
                if (!added) return prefixed("add usage of user '" + user + "'", added.error());
            }
        }
        for (std::string_view user : maybe_new_users) {
            const std::string key = encoding::user_key(user);
            auto listed = txn.get(*dbs.users, key); // a read: a page rewritten only for a new user
            if (!listed) return prefixed("list user '" + std::string(user) + "'", listed.error());
            if (*listed) continue;
            if (auto put = txn.put(*dbs.users, key, {}); !put)
                return prefixed("list user '" + std::string(user) + "'", put.error());
        }
        if (!ready(quotas_planned)) return Error{"the cycle's quota usage was not planned"};
        if (auto written = write_quota_records(txn, dbs, cycle); !written) return written;
        // The raw values of the addresses that moved: final with the usage
        // (the plan merges the owners that changed later, apart).
        std::string key, value; // one buffer each for every record of the cycle's big writes
        // An address's raw value; `key` is left holding its key.
        auto put_raw = [&](lmdb::WriteCursor& cursor, const AddressUpdates::Entry& update) -> Status {
            encoding::encode(update.key(), key);
            encoding::encode_address_checkpoint(update.raw(), {}, value);
            if (auto put = cursor.put(key, value); !put)
                return prefixed("store checkpoint of " + update.key().address(), put.error());
            return ok();
        };
        {
            auto address_cursor = lmdb::WriteCursor::open(txn, *dbs.checkpoint_addresses);
            if (!address_cursor) return prefixed("store checkpoints", address_cursor.error());
            for (const auto& moved : cycle.address_updates.appended()) // in key order: the encoding's order too
                if (auto put = put_raw(*address_cursor, moved); !put) return put;
        }
        if (!ready(rest_planned)) return Error{"the cycle's sessions and checkpoints were not planned"};
        // Sessions come in the order they moved.
        std::vector<const Session*> sessions;
        sessions.reserve(cycle.sessions.size());
        for (const Session& session : cycle.sessions) {
            if (session.id.empty()) return Error{"store session: empty session id (user '" + session.user + "')"};
            sessions.push_back(&session);
        }
        auto by_id = [](const Session* a, const Session* b) { return a->id < b->id; };
        if (!std::is_sorted(sessions.begin(), sessions.end(), by_id)) // the reconciler's come sorted
            std::sort(sessions.begin(), sessions.end(), by_id);
        // Ended ones move to the closed sessions, before the active ones are
        // written (no cursor is open on sessions_active while they leave it).
        auto closed_cursor = lmdb::WriteCursor::open(txn, *dbs.sessions);
        if (!closed_cursor) return prefixed("store sessions", closed_cursor.error());
        for (const Session* session : sessions) {
            if (session->active()) continue;
            if (auto del = txn.del(*dbs.sessions_active, session->id); !del)
                return prefixed("close session " + session->id, del.error());
            if (auto del = txn.del(*dbs.session_totals, session->id); !del)
                return prefixed("close session " + session->id, del.error());
            if (auto put = closed_cursor->put(session->id, encoding::encode(*session)); !put)
                return prefixed("store session " + session->id, put.error());
        }
        // An active session's totals always; its full record when more
        // than they changed (it started, roamed or changed addresses).
        auto active_cursor = lmdb::WriteCursor::open(txn, *dbs.sessions_active);
        if (!active_cursor) return prefixed("store sessions", active_cursor.error());
        std::vector<SessionTotals> whole;
        for (const Session* session : sessions) {
            if (!session->active()) continue;
            if (auto put = active_cursor->put(session->id, encoding::encode(*session)); !put)
                return prefixed("store session " + session->id, put.error());
            whole.push_back(totals_of(*session));
        }
        // The totals of those and of the sessions whose totals alone moved:
        // two lists in id order (the reconciler's), written merged.
        auto totals_cursor = lmdb::WriteCursor::open(txn, *dbs.session_totals);
        if (!totals_cursor) return prefixed("store sessions", totals_cursor.error());
        auto put_totals = [&](const SessionTotals& entry) -> Status {
            const std::string& id = entry.session->id;
            if (id.empty()) return Error{"store session: empty session id (user '" + entry.session->user + "')"};
            encoding::encode_session_totals(entry, value);
            if (auto put = totals_cursor->put(id, value); !put) return prefixed("store session " + id, put.error());
            return ok();
        };
        auto next_whole = whole.begin();
        const std::vector<SessionTotals>& totals = cycle.session_totals;
        for (size_t i = 0; i < totals.size(); ++i) {
            const SessionTotals& moved = totals[i];
            // Each entry's session and its id lie elsewhere in the heap: ask
            // for them early (totals 13 -> 7 ms at 100,000).
            if (i + 16 < totals.size()) __builtin_prefetch(totals[i + 16].session);
            if (i + 8 < totals.size()) __builtin_prefetch(totals[i + 8].session->id.data());
            for (; next_whole != whole.end() && next_whole->session->id < moved.session->id; ++next_whole)
                if (auto put = put_totals(*next_whole); !put) return put;
            if (auto put = put_totals(moved); !put) return put;
        }
        for (; next_whole != whole.end(); ++next_whole)
            if (auto put = put_totals(*next_whole); !put) return put;
        auto unattributed_cursor = lmdb::WriteCursor::open(txn, *dbs.unattributed);
        if (!unattributed_cursor) return prefixed("store unattributed usage", unattributed_cursor.error());
        for (const auto& [interface, increment] : cycle.unattributed) {
            if (increment == Traffic{}) continue;
            if (auto added = add_traffic(*unattributed_cursor, interface, increment); !added)
                return prefixed("add unattributed usage of " + interface, added.error());
        }
        // The addresses whose owner changed (a new one's raw value too).
        auto address_cursor = lmdb::WriteCursor::open(txn, *dbs.checkpoint_addresses);
        if (!address_cursor) return prefixed("store checkpoints", address_cursor.error());
        auto owner_cursor = lmdb::WriteCursor::open(txn, *dbs.checkpoint_owners);
        if (!owner_cursor) return prefixed("store checkpoints", owner_cursor.error());
        for (const auto& update : cycle.address_updates.changed()) {
            if (auto put = put_raw(*address_cursor, update); !put) return put;
            const std::string_view owner = cycle.address_updates.owner(update);
            auto set = owner.empty() ? txn.del(*dbs.checkpoint_owners, key) : owner_cursor->put(key, owner);
            if (!set) return prefixed("store the owner of " + update.key().address(), set.error());
        }
        std::set<uint32_t> interfaces;
        for (const auto& [ifindex, traffic] : cycle.interface_updates)
            interfaces.insert(ifindex);
        for (const auto& [ifindex, name] : cycle.interface_names)
            interfaces.insert(ifindex);
        for (uint32_t ifindex : interfaces) {
            const std::string key = encoding::interface_key(ifindex);
            const std::string context = "store checkpoint of interface " + std::to_string(ifindex);
            auto stored = txn.get(*dbs.checkpoint_interfaces, key);
            if (!stored) return prefixed(context, stored.error());
            encoding::InterfaceRecord record;
            if (*stored) {
                auto decoded = encoding::decode_interface_record(**stored);
                if (!decoded) return Error{context + ": the stored record is corrupt"};
                record = std::move(*decoded);
            }
            if (auto it = cycle.interface_updates.find(ifindex); it != cycle.interface_updates.end())
                record.traffic = it->second;
            if (auto it = cycle.interface_names.find(ifindex); it != cycle.interface_names.end())
                record.name = it->second;
            if (auto put = txn.put(*dbs.checkpoint_interfaces, key, encoding::encode(record)); !put)
                return prefixed(context, put.error());
        }
        if (cycle.identity) {
            if (auto put = txn.put(*dbs.checkpoint_meta, kIdentityKey, encoding::encode(*cycle.identity)); !put)
                return prefixed("store counter identity", put.error());
        }
        for (const auto& [instance, checkpoint] : cycle.stats_checkpoints) {
            if (auto put = txn.put(*dbs.stats_checkpoints, instance, encoding::encode(checkpoint)); !put)
                return prefixed("store Sing-Box checkpoint of " + instance, put.error());
        }
        return ok();
    }, failure);
}

Status Store::roll_up(int64_t now)
{
    if (impl_->options.read_only) return Error{"roll up: the store is open read-only"};
    const int64_t hour = impl_->calendar.start(now, Granularity::Hour);
    const Databases& dbs = impl_->dbs;
    return impl_->write("roll up usage", [&](lmdb::Txn& txn) -> Status {
        auto rolled = read_rolled_to(txn, *dbs.meta);
        if (!rolled) return rolled.error();
        if (hour <= *rolled) return ok(); // nothing dirty: LMDB commits without a sync
        if (auto up = roll_up_hours(txn, dbs, impl_->calendar, *rolled, hour); !up) return up;
        return txn.put(*dbs.meta, kRolledToKey, encoding::encode_i64(hour));
    });
}

Status Store::prune(int64_t now)
{
    if (impl_->options.read_only) return Error{"prune: the store is open read-only"};
    const auto& options = impl_->options;
    const int64_t hour_cutoff_by_age =
        bucket_start(now - int64_t{options.hourly_retention_days} * 86400, Granularity::Hour);
    const int64_t day_cutoff = bucket_start(now - int64_t{options.daily_retention_days} * 86400, Granularity::Day);
    const MDB_dbi usage = *impl_->dbs.usage;

    return impl_->write("prune", [&](lmdb::Txn& txn) -> Status {
        if (auto pruned = prune_alerts(txn, impl_->dbs, day_cutoff); !pruned) return prefixed("alerts", pruned.error());
        // Hours not yet in their days and months stay, however old.
        auto rolled = read_rolled_to(txn, *impl_->dbs.meta);
        if (!rolled) return rolled.error();
        const int64_t hour_cutoff = std::min(hour_cutoff_by_age, *rolled);
        // Time-major keys: what is past retention is a prefix of each
        // granularity's run. Months are kept.
        for (auto [granularity, cutoff] : {std::pair{Granularity::Hour, hour_cutoff}, {Granularity::Day, day_cutoff}}) {
            const std::string first = encoding::usage_key(granularity, std::numeric_limits<int64_t>::min(), {});
            const std::string end = encoding::usage_key(granularity, cutoff, {});
            std::vector<std::string> doomed;
            auto found = scan(txn, usage, first, [&](auto key, auto) -> Result<bool> {
                if (key >= end) return false;
                doomed.emplace_back(key);
                return true;
            });
            if (!found) return prefixed("usage", found.error());
            for (const std::string& key : doomed)
                if (auto removed = txn.del(usage, key); !removed) return prefixed("usage", removed.error());
        }
        return ok();
    });
}

} // namespace vpnmeter
