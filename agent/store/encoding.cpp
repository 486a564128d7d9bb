#include "store/encoding.h"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <nlohmann/json.hpp>

namespace vpnmeter::encoding {
namespace {

constexpr uint32_t kSessionRecordVersion = 1;

// Into a buffer, returning its end: a record's fields are gathered first
// and appended once (a push_back per byte checked the capacity eight times
// per number, and a cycle encodes millions of them).
char* put_le(char* at, uint64_t value, int width)
{
    for (int i = 0; i < width; ++i) *at++ = static_cast<char>(value >> (8 * i));
    return at;
}

char* put_be(char* at, uint64_t value, int width)
{
    for (int i = 0; i < width; ++i) *at++ = static_cast<char>(value >> (8 * (width - 1 - i)));
    return at;
}

void put_le(std::string& out, uint64_t value, int width)
{
    char bytes[8];
    out.append(bytes, static_cast<size_t>(put_le(bytes, value, width) - bytes));
}

void put_be(std::string& out, uint64_t value, int width)
{
    char bytes[8];
    out.append(bytes, static_cast<size_t>(put_be(bytes, value, width) - bytes));
}

uint64_t get_le(std::string_view in, size_t at, int width)
{
    uint64_t value = 0;
    for (int i = 0; i < width; ++i)
        value |= uint64_t(static_cast<uint8_t>(in[at + i])) << (8 * i);
    return value;
}

uint64_t get_be(std::string_view in, size_t at, int width)
{
    uint64_t value = 0;
    for (int i = 0; i < width; ++i)
        value = value << 8 | static_cast<uint8_t>(in[at + i]);
    return value;
}

constexpr uint64_t kSignBit = uint64_t(1) << 63;
constexpr uint32_t kSignBit32 = uint32_t(1) << 31;

char granularity_byte(Granularity granularity)
{
    switch (granularity) {
    case Granularity::Hour:
        return 'h';
    case Granularity::Day:
        return 'd';
    case Granularity::Month:
        return 'm';
    }
    return '?';
}

std::optional<Granularity> granularity_of(char byte)
{
    switch (byte) {
    case 'h':
        return Granularity::Hour;
    case 'd':
        return Granularity::Day;
    case 'm':
        return Granularity::Month;
    }
    return std::nullopt;
}

void put_traffic(std::string& out, const Traffic& t)
{
    char bytes[kTrafficSize];
    char* at = bytes;
    for (uint64_t value : {t.upload.packets, t.upload.bytes, t.download.packets, t.download.bytes})
        at = put_le(at, value, 8);
    out.append(bytes, sizeof bytes);
}

Traffic get_traffic(std::string_view in, size_t at)
{
    Traffic t;
    t.upload.packets = get_le(in, at, 8);
    t.upload.bytes = get_le(in, at + 8, 8);
    t.download.packets = get_le(in, at + 16, 8);
    t.download.bytes = get_le(in, at + 24, 8);
    return t;
}

Count count_from(const nlohmann::json& j)
{
    return Count{j.value("packets", uint64_t{0}), j.value("bytes", uint64_t{0})};
}

} // namespace

std::string encode(const Traffic& traffic)
{
    std::string out;
    encode(traffic, out);
    return out;
}

void encode(const Traffic& traffic, std::string& out)
{
    out.clear();
    out.reserve(kTrafficSize);
    put_traffic(out, traffic);
}

std::optional<Traffic> decode_traffic(std::string_view bytes)
{
    if (bytes.size() != kTrafficSize) return std::nullopt;
    return get_traffic(bytes, 0);
}

std::string encode_u32(uint32_t value)
{
    std::string out;
    put_le(out, value, 4);
    return out;
}

std::optional<uint32_t> decode_u32(std::string_view bytes)
{
    if (bytes.size() != 4) return std::nullopt;
    return static_cast<uint32_t>(get_le(bytes, 0, 4));
}

std::string usage_key(Granularity granularity, int64_t start, std::string_view user)
{
    std::string out;
    usage_key(granularity, start, user, out);
    return out;
}

void usage_key(Granularity granularity, int64_t start, std::string_view user, std::string& out)
{
    char head[kUsageKeyOverhead];
    head[0] = granularity_byte(granularity);
    put_be(head + 1, static_cast<uint64_t>(start) ^ kSignBit, 8);
    out.reserve(user.size() + kUsageKeyOverhead);
    out.assign(head, sizeof head);
    out.append(user);
}

std::optional<UsageKey> decode_usage_key(std::string_view bytes)
{
    if (bytes.size() < kUsageKeyOverhead) return std::nullopt;
    const auto granularity = granularity_of(bytes[0]);
    if (!granularity) return std::nullopt;
    return UsageKey{bytes.substr(kUsageKeyOverhead), *granularity,
                    static_cast<int64_t>(get_be(bytes, 1, 8) ^ kSignBit)};
}

std::optional<UsageKey> decode_schema2_usage_key(std::string_view bytes)
{
    if (bytes.size() < kUsageKeyOverhead + 2) return std::nullopt;
    const size_t user_size = get_be(bytes, 0, 2);
    if (bytes.size() != user_size + kUsageKeyOverhead + 2) return std::nullopt;
    const auto granularity = granularity_of(bytes[2 + user_size]);
    if (!granularity) return std::nullopt;
    return UsageKey{bytes.substr(2, user_size), *granularity,
                    static_cast<int64_t>(get_be(bytes, 3 + user_size, 8) ^ kSignBit)};
}

std::string user_key(std::string_view user)
{
    std::string out;
    out.reserve(user.size() + 2);
    put_be(out, user.size(), 2); // callers keep users far below 64 KiB (LMDB's key limit)
    out.append(user);
    return out;
}

std::optional<std::string_view> decode_user_key(std::string_view bytes)
{
    if (bytes.size() < 2 || get_be(bytes, 0, 2) != bytes.size() - 2) return std::nullopt;
    return bytes.substr(2);
}

std::string encode(const QuotaUsageRecord& record)
{
    std::string out;
    encode(record, out);
    return out;
}

void encode(const QuotaUsageRecord& record, std::string& out)
{
    char bytes[kQuotaUsageSize];
    char* at = put_le(bytes, static_cast<uint64_t>(record.period_start), 8);
    at = put_le(at, record.upload, 8);
    put_le(at, record.download, 8);
    out.assign(bytes, sizeof bytes);
}

std::optional<QuotaUsageRecord> decode_quota_usage(std::string_view bytes)
{
    if (bytes.size() != kQuotaUsageSize) return std::nullopt;
    return QuotaUsageRecord{static_cast<int64_t>(get_le(bytes, 0, 8)), get_le(bytes, 8, 8), get_le(bytes, 16, 8)};
}

std::string encode_i64(int64_t value)
{
    std::string out;
    put_le(out, static_cast<uint64_t>(value), 8);
    return out;
}

std::optional<int64_t> decode_i64(std::string_view bytes)
{
    if (bytes.size() != 8) return std::nullopt;
    return static_cast<int64_t>(get_le(bytes, 0, 8));
}

std::string alert_prefix(std::string_view user, int64_t period_start)
{
    std::string out;
    out.reserve(user.size() + kAlertKeyOverhead);
    put_be(out, user.size(), 2);
    out.append(user);
    put_be(out, static_cast<uint64_t>(period_start) ^ kSignBit, 8);
    return out;
}

std::string alert_key(std::string_view user, int64_t period_start, int32_t threshold)
{
    std::string out = alert_prefix(user, period_start);
    put_be(out, static_cast<uint32_t>(threshold) ^ kSignBit32, 4);
    return out;
}

std::optional<AlertKey> decode_alert_key(std::string_view bytes)
{
    if (bytes.size() < kAlertKeyOverhead) return std::nullopt;
    const size_t user_size = get_be(bytes, 0, 2);
    if (bytes.size() != user_size + kAlertKeyOverhead) return std::nullopt;
    return AlertKey{bytes.substr(2, user_size), static_cast<int64_t>(get_be(bytes, 2 + user_size, 8) ^ kSignBit),
                    static_cast<int32_t>(static_cast<uint32_t>(get_be(bytes, 10 + user_size, 4)) ^ kSignBit32)};
}

namespace {

// An IPv4 key as the datapath writes it: the 12 bytes after the address are zero.
bool compact_v4(const ClientKey& key)
{
    return key.family == AF_INET && std::all_of(key.addr.begin() + 4, key.addr.end(), [](uint8_t b) { return b == 0; });
}

constexpr size_t kMaxVarint = 10; // bytes of a u64

char* put_varint(char* at, uint64_t value)
{
    for (; value >= 0x80; value >>= 7) *at++ = static_cast<char>((value & 0x7f) | 0x80);
    *at++ = static_cast<char>(value);
    return at;
}

std::optional<uint64_t> get_varint(std::string_view in, size_t& at)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && at < in.size(); shift += 7) {
        const auto byte = static_cast<uint8_t>(in[at++]);
        value |= uint64_t(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return value;
    }
    return std::nullopt; // truncated, or longer than a u64
}

} // namespace

std::string encode(const ClientKey& key)
{
    std::string out;
    encode(key, out);
    return out;
}

void encode(const ClientKey& key, std::string& out)
{
    const size_t address_size = compact_v4(key) ? 4 : key.addr.size();
    char bytes[5 + sizeof key.addr];
    put_be(bytes, key.ifindex, 4);
    bytes[4] = static_cast<char>(key.family);
    std::memcpy(bytes + 5, key.addr.data(), address_size);
    out.assign(bytes, 5 + address_size);
}

std::optional<ClientKey> decode_client_key(std::string_view bytes)
{
    if (bytes.size() != 5 + 4 && bytes.size() != 5 + 16) return std::nullopt;
    ClientKey key;
    key.ifindex = static_cast<uint32_t>(get_be(bytes, 0, 4));
    key.family = static_cast<uint8_t>(bytes[4]);
    if (bytes.size() == 5 + 4 && key.family != AF_INET) return std::nullopt;
    for (size_t i = 5; i < bytes.size(); ++i) key.addr[i - 5] = static_cast<uint8_t>(bytes[i]);
    return key;
}

std::optional<ClientKey> decode_schema3_client_key(std::string_view bytes)
{
    if (bytes.size() != 24) return std::nullopt;
    ClientKey key;
    key.ifindex = static_cast<uint32_t>(get_be(bytes, 0, 4));
    key.family = static_cast<uint8_t>(bytes[4]);
    for (size_t i = 0; i < key.addr.size(); ++i) key.addr[i] = static_cast<uint8_t>(bytes[8 + i]);
    return key;
}

std::string encode(const AddressCheckpoint& checkpoint)
{
    return encode_address_checkpoint(checkpoint.raw, checkpoint.owner);
}

std::string encode_address_checkpoint(const Traffic& raw, std::string_view owner)
{
    std::string out;
    encode_address_checkpoint(raw, owner, out);
    return out;
}

void encode_address_checkpoint(const Traffic& raw, std::string_view owner, std::string& out)
{
    char bytes[4 * kMaxVarint];
    char* at = bytes;
    for (uint64_t value : {raw.upload.packets, raw.upload.bytes, raw.download.packets, raw.download.bytes})
        at = put_varint(at, value);
    out.reserve(static_cast<size_t>(at - bytes) + owner.size());
    out.assign(bytes, at);
    out.append(owner);
}

std::optional<AddressCheckpoint> decode_address_checkpoint(std::string_view bytes)
{
    size_t at = 0;
    std::array<uint64_t, 4> values{};
    for (uint64_t& value : values) {
        auto decoded = get_varint(bytes, at);
        if (!decoded) return std::nullopt;
        value = *decoded;
    }
    return AddressCheckpoint{Traffic{{values[0], values[1]}, {values[2], values[3]}}, std::string(bytes.substr(at))};
}

void encode_session_totals(const SessionTotals& totals, std::string& out)
{
    char bytes[6 * kMaxVarint];
    char* at = bytes;
    const Traffic& u = totals.usage;
    for (uint64_t value : {u.upload.packets, u.upload.bytes, u.download.packets, u.download.bytes,
                           totals.source_upload_bytes, totals.source_download_bytes})
        at = put_varint(at, value);
    out.assign(bytes, at);
}

bool decode_session_totals(std::string_view bytes, Session& session)
{
    size_t at = 0;
    std::array<uint64_t, 6> values{};
    for (uint64_t& value : values) {
        auto decoded = get_varint(bytes, at);
        if (!decoded) return false;
        value = *decoded;
    }
    if (at != bytes.size()) return false;
    session.usage = Traffic{{values[0], values[1]}, {values[2], values[3]}};
    session.source_upload_bytes = values[4];
    session.source_download_bytes = values[5];
    return true;
}

std::optional<AddressCheckpoint> decode_schema3_address_checkpoint(std::string_view bytes)
{
    if (bytes.size() < kTrafficSize) return std::nullopt;
    return AddressCheckpoint{get_traffic(bytes, 0), std::string(bytes.substr(kTrafficSize))};
}

std::string interface_key(uint32_t ifindex)
{
    std::string out;
    put_be(out, ifindex, 4);
    return out;
}

std::optional<uint32_t> decode_interface_key(std::string_view bytes)
{
    if (bytes.size() != 4) return std::nullopt;
    return static_cast<uint32_t>(get_be(bytes, 0, 4));
}

std::string encode(const InterfaceRecord& record)
{
    std::string out;
    out.reserve(1 + 2 * kTrafficSize + record.name.size());
    out.push_back(record.traffic ? 1 : 0);
    const InterfaceTraffic traffic = record.traffic.value_or(InterfaceTraffic{});
    put_traffic(out, traffic.total);
    put_traffic(out, traffic.unattributed);
    out.append(record.name);
    return out;
}

std::optional<InterfaceRecord> decode_interface_record(std::string_view bytes)
{
    if (bytes.size() < 1 + 2 * kTrafficSize) return std::nullopt;
    InterfaceRecord record;
    if (bytes[0] & 1) record.traffic = InterfaceTraffic{get_traffic(bytes, 1), get_traffic(bytes, 1 + kTrafficSize)};
    record.name = bytes.substr(1 + 2 * kTrafficSize);
    return record;
}

std::string encode(const CounterIdentity& identity)
{
    std::string out;
    put_le(out, identity.clients_map_id, 4);
    put_le(out, identity.ifaces_map_id, 4);
    out.append(identity.boot_id);
    return out;
}

std::optional<CounterIdentity> decode_identity(std::string_view bytes)
{
    if (bytes.size() < 8) return std::nullopt;
    CounterIdentity identity;
    identity.clients_map_id = static_cast<uint32_t>(get_le(bytes, 0, 4));
    identity.ifaces_map_id = static_cast<uint32_t>(get_le(bytes, 4, 4));
    identity.boot_id = bytes.substr(8);
    return identity;
}

// Session records, version 2: fixed-width fields, then length-prefixed
// text. Written every cycle for every session that moved, so it must be
// cheap (version 1, CBOR through nlohmann::json, cost ~2 us a session).
// Its first byte, 2, can never start a version 1 record (a CBOR map starts
// with 0xa0..0xbf), so both are read.
constexpr uint8_t kSessionBinaryVersion = 2;
constexpr size_t kSessionFixedSize = 1 + 1 + 8 + 8 + kTrafficSize + 8 + 8 + 4;

void put_text(std::string& out, std::string_view text)
{
    put_le(out, text.size(), 4);
    out.append(text);
}

std::string encode(const Session& s)
{
    size_t size = kSessionFixedSize + 4 * 5;
    for (const auto* text : {&s.id, &s.user, &s.instance, &s.interface, &s.real_address}) size += text->size();
    for (const auto& address : s.addresses) size += 4 + address.size();
    std::string out;
    out.reserve(size);
    out.push_back(static_cast<char>(kSessionBinaryVersion));
    out.push_back(s.end ? 1 : 0);
    put_le(out, static_cast<uint64_t>(s.start), 8);
    put_le(out, static_cast<uint64_t>(s.end.value_or(0)), 8);
    put_traffic(out, s.usage);
    put_le(out, s.source_upload_bytes, 8);
    put_le(out, s.source_download_bytes, 8);
    put_le(out, s.addresses.size(), 4);
    for (const auto* text : {&s.id, &s.user, &s.instance, &s.interface, &s.real_address}) put_text(out, *text);
    for (const auto& address : s.addresses) put_text(out, address);
    return out;
}

namespace {

Result<Session> decode_session_binary(std::string_view bytes)
{
    if (bytes.size() < kSessionFixedSize) return Error{"session record is truncated"};
    Session s;
    size_t at = 1;
    const bool ended = bytes[at++] & 1;
    s.start = static_cast<int64_t>(get_le(bytes, at, 8));
    const auto end = static_cast<int64_t>(get_le(bytes, at + 8, 8));
    if (ended) s.end = end;
    at += 16;
    s.usage = get_traffic(bytes, at);
    at += kTrafficSize;
    s.source_upload_bytes = get_le(bytes, at, 8);
    s.source_download_bytes = get_le(bytes, at + 8, 8);
    const uint64_t addresses = get_le(bytes, at + 16, 4);
    at += 20;
    auto text = [&](std::string& into) {
        if (bytes.size() - at < 4) return false;
        const uint64_t size = get_le(bytes, at, 4);
        at += 4;
        if (bytes.size() - at < size) return false;
        into.assign(bytes.substr(at, size));
        at += size;
        return true;
    };
    for (auto* field : {&s.id, &s.user, &s.instance, &s.interface, &s.real_address})
        if (!text(*field)) return Error{"session record is truncated"};
    if (addresses > (bytes.size() - at) / 4) return Error{"session record is truncated"};
    s.addresses.resize(addresses);
    for (auto& address : s.addresses)
        if (!text(address)) return Error{"session record is truncated"};
    if (at != bytes.size()) return Error{"session record has " + std::to_string(bytes.size() - at) + " extra bytes"};
    return s;
}

Result<Session> decode_session_cbor(std::string_view bytes)
{
    const auto j = nlohmann::json::from_cbor(bytes.begin(), bytes.end(), true, false);
    if (j.is_discarded() || !j.is_object()) return Error{"session record is not a CBOR map"};
    try {
        const auto version = j.value("v", uint32_t{0});
        if (version != kSessionRecordVersion)
            return Error{"session record version " + std::to_string(version) + " is not " +
                         std::to_string(kSessionRecordVersion)};
        Session s;
        s.id = j.value("id", std::string());
        s.user = j.value("user", std::string());
        s.instance = j.value("instance", std::string());
        s.interface = j.value("interface", std::string());
        s.addresses = j.value("addresses", std::vector<std::string>());
        s.real_address = j.value("real_address", std::string());
        s.start = j.value("start", int64_t{0});
        if (auto end = j.find("end"); end != j.end() && !end->is_null()) s.end = end->get<int64_t>();
        if (auto usage = j.find("usage"); usage != j.end()) {
            s.usage.upload = count_from(usage->value("upload", nlohmann::json::object()));
            s.usage.download = count_from(usage->value("download", nlohmann::json::object()));
        }
        s.source_upload_bytes = j.value("source_upload_bytes", uint64_t{0});
        s.source_download_bytes = j.value("source_download_bytes", uint64_t{0});
        return s;
    } catch (const nlohmann::json::exception& e) {
        return Error{std::string("session record: ") + e.what()};
    }
}

} // namespace

Result<Session> decode_session(std::string_view bytes)
{
    if (!bytes.empty() && static_cast<uint8_t>(bytes[0]) == kSessionBinaryVersion) return decode_session_binary(bytes);
    return decode_session_cbor(bytes); // version 1, from stores of schema 1
}

std::string encode(const StatsCheckpoint& checkpoint)
{
    nlohmann::json j = {{"v", 1}, {"time", checkpoint.time}, {"counters", checkpoint.counters}};
    if (checkpoint.uptime) j["uptime"] = *checkpoint.uptime;
    const auto cbor = nlohmann::json::to_cbor(j);
    return std::string(cbor.begin(), cbor.end());
}

Result<StatsCheckpoint> decode_stats_checkpoint(std::string_view bytes)
{
    const auto j = nlohmann::json::from_cbor(bytes.begin(), bytes.end(), true, false);
    if (j.is_discarded() || !j.is_object()) return Error{"Sing-Box checkpoint is not a CBOR map"};
    try {
        if (const auto version = j.value("v", 0); version != 1)
            return Error{"Sing-Box checkpoint version " + std::to_string(version) + " is not 1"};
        StatsCheckpoint checkpoint;
        if (j.contains("uptime")) checkpoint.uptime = j["uptime"].get<uint64_t>();
        checkpoint.time = j.value("time", int64_t{0});
        checkpoint.counters = j.value("counters", std::map<std::string, uint64_t>());
        return checkpoint;
    } catch (const nlohmann::json::exception& e) {
        return Error{std::string("Sing-Box checkpoint: ") + e.what()};
    }
}

} // namespace vpnmeter::encoding
