// The store's on-disk encoding: every key and value the LMDB databases hold.
//
// Numbers are written byte by byte at a fixed width, never as in-memory
// structs (no padding, no host byte order). Values are little-endian; keys
// that are range-scanned are big-endian, so LMDB's bytewise order is the
// numeric order. A format change needs a schema version bump and a migration
// (store.cpp).
//
//   meta                   "schema_version"       -> u32; "usage_rolled_to" -> i64
//   sessions               session id (bytes)     -> session record (below): closed sessions
//   sessions_active        session id (bytes)     -> session record: the active ones
//   session_totals         session id (bytes)     -> session totals (six varints: usage, the
//                                                    VPN's counters) of active ones, which
//                                                    override their record's
//   usage_by_time          usage key (below)      -> traffic
//   users                  user key (below)       -> nothing: every user with usage
//   unattributed           interface name (bytes) -> traffic
//   checkpoint_addresses   client key (below)     -> address checkpoint (below): the raw
//                                                    counters last accounted for
//   checkpoint_owners      client key             -> session id (bytes) of the address's
//                                                    owner, if any (schema 7; before, it
//                                                    ended the address checkpoint)
//   checkpoint_interfaces  ifindex (u32 BE)       -> u8 flags (bit 0: traffic present),
//                                                    interface traffic (total, unattributed),
//                                                    name (rest)
//   checkpoint_meta        "identity"             -> u32 clients map id, u32 ifaces map id,
//                                                    boot id (rest)
//   quota_usage            user (bytes)           -> quota usage (below)
//   alerts_fired           alert key (below)      -> i64 fired at (8 bytes)
//   grants                 user (bytes)           -> JSON text, as given (the quota engine's
//                                                    format: opaque to the store)
//   stats_checkpoints      Sing-Box instance name -> CBOR map {"v": 1, "time": i64,
//                                                    "uptime": u64 (optional),
//                                                    "counters": {counter name: u64}}
//
// The last four were added after schema version 1 without a bump: they are
// new databases, which older releases ignore and this one creates on open.
//
//   traffic     = u64 upload packets, upload bytes, download packets, download bytes (32 bytes)
//   usage key   = granularity ('h', 'd', 'm'), i64 BE start with the sign bit
//                 flipped (so negative times sort first), user bytes (rest).
//                 Time-major: the buckets a cycle adds to are three
//                 contiguous runs (this hour, day and month of every user),
//                 so a cycle dirties pages in proportion to the users that
//                 moved, not to the history between them; pruning cuts a
//                 prefix. (Schemas 1 and 2 had "usage", keyed by u16 BE
//                 length of user, user, granularity, start: user-major.)
//   user key    = u16 BE length of user, user bytes: users list by length, then name.
//   client key  = u32 BE ifindex, u8 family, the address: 4 bytes for IPv4 (when
//                 the 12 bytes after it are zero, as the datapath writes it), 16
//                 otherwise. Bytewise order is the ClientKey order, so a scan
//                 fills a sorted table by appending. (Schemas 1-3: 24 bytes,
//                 u32 BE ifindex, u8 family, 3 zero bytes, 16 address bytes.)
//   address checkpoint = upload packets, upload bytes, download packets,
//                 download bytes as LEB128 varints. Schemas 4-6: then the owner
//                 session id (rest; empty: nobody); schemas 1-3: 32-byte
//                 traffic, owner. Every cycle rewrites the ones that moved:
//                 at 100,000 an entry is ~25 bytes instead of ~66 in schema 3.
//   quota usage = i64 period start, u64 upload bytes, u64 download bytes (24 bytes)
//   alert key   = u16 BE length of user, user bytes, i64 BE period start and
//                 i32 BE threshold, both with the sign bit flipped: one
//                 (user, period) is one contiguous range ordered by threshold.
//   session     = u8 version (2), u8 flags (bit 0: ended), i64 start, i64 end,
//                 traffic (usage), u64 source upload bytes, u64 source download
//                 bytes, u32 address count, then u32-length-prefixed texts: id,
//                 user, instance, interface, real address, the addresses.
//                 Names are bytes from the VPN, kept as they are. Schema 1
//                 stored CBOR maps ({"v": 1, one field per member}); decode
//                 still reads them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "counters.h"
#include "result.h"
#include "session.h"
#include "store/store.h"

namespace vpnmeter::encoding {

constexpr size_t kTrafficSize = 32;
constexpr size_t kUsageKeyOverhead = 1 + 8; // before the user's bytes

std::string encode(const Traffic& traffic);
void encode(const Traffic& traffic, std::string& out); // writes over `out`, as below
std::optional<Traffic> decode_traffic(std::string_view bytes);

std::string encode_u32(uint32_t value);
std::optional<uint32_t> decode_u32(std::string_view bytes);

std::string usage_key(Granularity granularity, int64_t start, std::string_view user);
// Each `..., std::string& out` variant below writes over `out`: a cycle's
// hundreds of thousands of writes reuse one buffer instead of allocating each.
void usage_key(Granularity granularity, int64_t start, std::string_view user, std::string& out);
struct UsageKey {
    std::string_view user;
    Granularity granularity;
    int64_t start;
};
std::optional<UsageKey> decode_usage_key(std::string_view bytes);
// The user-major key of schemas 1 and 2, for the migration.
std::optional<UsageKey> decode_schema2_usage_key(std::string_view bytes);

std::string user_key(std::string_view user);
std::optional<std::string_view> decode_user_key(std::string_view bytes);

constexpr size_t kQuotaUsageSize = 24;
constexpr size_t kAlertKeyOverhead = 2 + 8 + 4; // around the user's bytes

std::string encode(const QuotaUsageRecord& record);
void encode(const QuotaUsageRecord& record, std::string& out);
std::optional<QuotaUsageRecord> decode_quota_usage(std::string_view bytes);

std::string encode_i64(int64_t value);
std::optional<int64_t> decode_i64(std::string_view bytes);

// Every alert of one user in one period starts with this.
std::string alert_prefix(std::string_view user, int64_t period_start);
std::string alert_key(std::string_view user, int64_t period_start, int32_t threshold);
struct AlertKey {
    std::string_view user;
    int64_t period_start;
    int32_t threshold;
};
std::optional<AlertKey> decode_alert_key(std::string_view bytes);

std::string encode(const ClientKey& key); // 9 bytes for IPv4, 21 for IPv6
void encode(const ClientKey& key, std::string& out); // writes over `out`
std::optional<ClientKey> decode_client_key(std::string_view bytes);
std::string encode(const AddressCheckpoint& checkpoint);
std::string encode_address_checkpoint(const Traffic& raw, std::string_view owner);
void encode_address_checkpoint(const Traffic& raw, std::string_view owner, std::string& out);
std::optional<AddressCheckpoint> decode_address_checkpoint(std::string_view bytes);
// Schemas 1 to 3, for the migration: a 24-byte key, a 32-byte traffic value.
std::optional<ClientKey> decode_schema3_client_key(std::string_view bytes);
std::optional<AddressCheckpoint> decode_schema3_address_checkpoint(std::string_view bytes);

std::string interface_key(uint32_t ifindex);
std::optional<uint32_t> decode_interface_key(std::string_view bytes);

// One interface's checkpoint: the raw counters and the name may be updated
// independently, so either may be missing.
struct InterfaceRecord {
    std::optional<InterfaceTraffic> traffic;
    std::string name; // empty: unknown
};
std::string encode(const InterfaceRecord& record);
std::optional<InterfaceRecord> decode_interface_record(std::string_view bytes);

std::string encode(const CounterIdentity& identity);
std::optional<CounterIdentity> decode_identity(std::string_view bytes);

std::string encode(const Session& session);
Result<Session> decode_session(std::string_view bytes);
// What changes every cycle of an active session: its usage and the VPN's
// counters, six varints (schema 6: beside the full record, which then only
// changes when the session starts, moves or ends).
void encode_session_totals(const SessionTotals& totals, std::string& out);
// Sets those fields of `session`; false if the bytes are not a record.
bool decode_session_totals(std::string_view bytes, Session& session);
std::string encode(const StatsCheckpoint& checkpoint);
Result<StatsCheckpoint> decode_stats_checkpoint(std::string_view bytes);

} // namespace vpnmeter::encoding
