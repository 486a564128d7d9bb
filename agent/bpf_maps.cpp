#include "bpf_maps.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <future>
#include <optional>
#include <span>
#include <vector>

namespace vpnmeter {
namespace {

constexpr uint32_t kBatchSize = 4096;
constexpr size_t kParallel = 32768; // client entries from which the read and its sort use two cores

// Some of a hash map's buckets: [from, until) of `buckets` (the kernel's
// batch cursor for hash maps is a bucket index, since 5.6).
struct BucketRange {
    uint32_t from = 0, until = 0, buckets = 0;
};

// Visits a per-CPU map's entries by batch: visit(const Key&,
// std::span<const Value>), one key and its per-CPU values, returning false
// when it has no room for more. With `range`, from its first bucket until
// the cursor reaches its end (a batch holds whole buckets: a few past it
// come too). false: the kernel has no batch ops (nothing was visited), the
// visitor had no room, or the cursor did not behave like a bucket index.
template <class Key, class Value, class Visit>
Result<bool> visit_batches(int fd, int ncpus, const char* what, Visit&& visit,
                           std::optional<BucketRange> range = std::nullopt)
{
    std::vector<Key> keys(kBatchSize);
    std::vector<Value> values(static_cast<size_t>(kBatchSize) * ncpus);
    uint64_t token = range ? range->from : 0; // read as a u32; 8 bytes is room enough
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    for (bool first = true;; first = false) {
        uint32_t count = kBatchSize;
        uint64_t next = 0;
        int err = bpf_map_lookup_batch(fd, first && token == 0 ? nullptr : &token, &next, keys.data(), values.data(),
                                       &count, &opts);
        if (err && err != -ENOENT) {
            if (first && count == 0 && (err == -EINVAL || err == -ENOTSUP || err == -EOPNOTSUPP)) return false;
            return os_error(std::string("read ") + what + " (batch lookup)", err);
        }
        for (uint32_t i = 0; i < count; ++i)
            if (!visit(keys[i], std::span<const Value>(values.data() + static_cast<size_t>(i) * ncpus, ncpus)))
                return false;
        if (err == -ENOENT) return true; // past the last entry
        if (range && (next <= token || next > range->buckets)) return false;
        token = next;
        if (range && token >= range->until) return true;
    }
}

// Visits every entry of a per-CPU map (as visit_batches), by key iteration
// on kernels without batch ops.
template <class Key, class Value, class Visit>
Status for_each_percpu(int fd, int ncpus, const char* what, Visit&& visit)
{
    auto batched = visit_batches<Key, Value>(fd, ncpus, what, [&](const Key& key, std::span<const Value> per_cpu) {
        visit(key, per_cpu);
        return true;
    });
    if (!batched) return batched.error();
    if (*batched) return ok();
    // Key iteration: slower, and an entry deleted meanwhile is simply skipped.
    Key key{}, next{};
    std::vector<Value> per_cpu(ncpus);
    for (void* prev = nullptr; bpf_map_get_next_key(fd, prev, &next) == 0; prev = &key) {
        key = next;
        if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) == 0) visit(key, std::span<const Value>(per_cpu));
    }
    return ok();
}

// The client map's entries read on two cores, half of its buckets each
// (about 2x: the kernel's copying is most of a read), into two regions of
// `clients` sized from the last read, then moved together: no second
// buffer (at 1M clients one is 56 MB). An entry in a bucket both halves
// read appears twice, for the sort to drop. false: the cursor is not a
// bucket index on this kernel, or the map grew past the room: read
// sequentially.
Result<bool> read_clients_in_halves(int fd, int ncpus, uint32_t max_entries, size_t expected,
                                    std::vector<ClientTraffic::value_type>& clients)
{
    const uint32_t buckets = std::bit_ceil(max_entries); // the kernel's n_buckets
    // Each half holds about half the entries (a hash spreads them evenly),
    // some new ones, and one batch the other half also read.
    const size_t room = expected / 2 + expected / 64 + 2 * kBatchSize;
    clients.resize(2 * room);
    auto read_half = [&](BucketRange range, size_t& at, size_t end) {
        return visit_batches<vpnmeter_client_key, vpnmeter_client_counters>(
            fd, ncpus, kClientsMap,
            [&](const vpnmeter_client_key& key, std::span<const vpnmeter_client_counters> per_cpu) {
                if (at == end) return false;
                clients[at++] = {ClientKey::from_bpf(key), sum_per_cpu(per_cpu)};
                return true;
            },
            range);
    };
    size_t lower_end = 0, upper_end = room;
    auto upper_read = std::async(std::launch::async, [&] {
        return read_half({buckets / 2, buckets, buckets}, upper_end, 2 * room);
    });
    auto lower = read_half({0, buckets / 2, buckets}, lower_end, room);
    auto higher = upper_read.get();
    if (!lower) return lower.error();
    if (!higher) return higher.error();
    if (!*lower || !*higher) return false;
    auto moved = std::move(clients.begin() + static_cast<std::ptrdiff_t>(room),
                           clients.begin() + static_cast<std::ptrdiff_t>(upper_end),
                           clients.begin() + static_cast<std::ptrdiff_t>(lower_end));
    clients.erase(moved, clients.end());
    return true;
}

} // namespace

Result<UniqueFd> open_pinned_map(const std::string& pin_path, const char* name)
{
    const std::string path = pin_path + "/" + name;
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            return Error{"no vpnmeter maps pinned at " + pin_path + " (" + path +
                             " missing): is vpnmeterd running with this bpf.pin_path?",
                         err};
        return os_error("open pinned map " + path, err);
    }
    return UniqueFd(fd);
}

Result<PinnedMaps> PinnedMaps::open(const std::string& pin_path)
{
    PinnedMaps maps;
    maps.ncpus_ = libbpf_num_possible_cpus();
    if (maps.ncpus_ <= 0) return os_error("count possible CPUs", maps.ncpus_);
    auto clients = open_pinned_map(pin_path, kClientsMap);
    if (!clients) return clients.error();
    auto ifaces = open_pinned_map(pin_path, kIfacesMap);
    if (!ifaces) return ifaces.error();
    auto ifaces_more = open_pinned_map(pin_path, kIfacesMoreMap);
    if (!ifaces_more) return ifaces_more.error();
    auto links = open_pinned_map(pin_path, kLinksMap);
    if (!links) return links.error();
    maps.clients_ = std::move(clients.value());
    maps.ifaces_ = std::move(ifaces.value());
    maps.ifaces_more_ = std::move(ifaces_more.value());
    maps.links_ = std::move(links.value());

    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(maps.clients_.get(), &info, &len))
        return os_error("query " + pin_path + "/" + kClientsMap);
    if (info.key_size != sizeof(vpnmeter_client_key) || info.value_size != sizeof(vpnmeter_client_counters))
        return Error{pin_path + "/" + kClientsMap + " has an incompatible layout (from another vpnmeter version?)"};
    maps.max_clients_ = info.max_entries;
    // Checked by read(), not here: detach_all() must still open maps an
    // older version pinned, to remove them.
    info = {};
    len = sizeof info;
    if (bpf_obj_get_info_by_fd(maps.ifaces_.get(), &info, &len))
        return os_error("query " + pin_path + "/" + kIfacesMap);
    maps.ifaces_value_size_ = info.value_size;
    maps.pin_path_ = pin_path;
    return maps;
}

Result<CounterSnapshot> PinnedMaps::read()
{
    if (ifaces_value_size_ != sizeof(vpnmeter_iface_counters))
        return Error{pin_path_ + "/" + kIfacesMap + " has an incompatible layout (from another vpnmeter version?): " +
                     "run `vpnmeterd --detach` to recreate the maps"};
    CounterSnapshot snapshot;
    std::vector<ClientTraffic::value_type> clients; // in hash order; sorted once below
    bool in_halves = last_client_count_ >= kParallel;
    if (!in_halves) clients.reserve(last_client_count_);
    if (in_halves) {
        auto read = read_clients_in_halves(clients_.get(), ncpus_, max_clients_, last_client_count_, clients);
        if (!read) return read.error();
        in_halves = *read;
        if (!in_halves) clients.clear();
    }
    Status status = ok();
    if (!in_halves) {
        status = for_each_percpu<vpnmeter_client_key, vpnmeter_client_counters>(
            clients_.get(), ncpus_, kClientsMap, [&](const auto& key, auto per_cpu) {
                clients.emplace_back(ClientKey::from_bpf(key), sum_per_cpu(per_cpu));
            });
        if (!status) return status.error();
    }
    // Many entries: split at the median in place, then each half sorted on
    // a core of its own (no second buffer, as a merge would need: 56 MB at
    // 1M). A hash map holds each key once; a bucket both halves of the read
    // took is in twice, and its second copies go once sorted.
    auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (clients.size() >= kParallel) {
        const auto middle = clients.begin() + static_cast<std::ptrdiff_t>(clients.size() / 2);
        std::nth_element(clients.begin(), middle, clients.end(), by_key);
        auto upper = std::async(std::launch::async, [&] { std::sort(middle, clients.end(), by_key); });
        std::sort(clients.begin(), middle, by_key);
        upper.get();
    } else {
        std::sort(clients.begin(), clients.end(), by_key);
    }
    if (in_halves) {
        auto same_key = [](const auto& a, const auto& b) { return a.first == b.first; };
        clients.erase(std::unique(clients.begin(), clients.end(), same_key), clients.end());
    }
    last_client_count_ = clients.size();
    snapshot.clients = ClientTraffic::adopt_sorted(std::move(clients));
    // Every array slot exists; the ones no packet touched are not interfaces.
    auto add_interface = [&](const uint32_t& ifindex, auto per_cpu) {
        InterfaceTraffic traffic = sum_per_cpu(per_cpu);
        if (traffic != InterfaceTraffic{}) snapshot.interfaces[ifindex] = traffic;
    };
    for (auto [fd, name] : {std::pair{ifaces_.get(), kIfacesMap}, std::pair{ifaces_more_.get(), kIfacesMoreMap}}) {
        status = for_each_percpu<uint32_t, vpnmeter_iface_counters>(fd, ncpus_, name, add_interface);
        if (!status) return status.error();
    }
    // Attached devices show up even before their first packet.
    if (auto registry = links())
        for (const auto& [ifindex, link] : registry.value())
            if (link.flags & (VPNMETER_LINK_INGRESS | VPNMETER_LINK_EGRESS)) snapshot.interfaces.try_emplace(ifindex);
    return snapshot;
}

Result<std::map<uint32_t, LinkRecord>> PinnedMaps::links() const
{
    std::map<uint32_t, LinkRecord> out;
    uint32_t key = 0, next = 0;
    for (void* prev = nullptr; bpf_map_get_next_key(links_.get(), prev, &next) == 0; prev = &key) {
        key = next;
        vpnmeter_link value{};
        if (bpf_map_lookup_elem(links_.get(), &key, &value) == 0)
            out[key] = {std::string(value.name, strnlen(value.name, sizeof value.name)), value.flags};
    }
    return out;
}

Status PinnedMaps::put_link(uint32_t ifindex, const LinkRecord& link)
{
    vpnmeter_link value{};
    std::strncpy(value.name, link.name.c_str(), sizeof value.name - 1);
    value.flags = link.flags;
    if (bpf_map_update_elem(links_.get(), &ifindex, &value, BPF_ANY))
        return os_error("record " + link.name + " in " + kLinksMap);
    return ok();
}

Status PinnedMaps::erase_link(uint32_t ifindex)
{
    if (bpf_map_delete_elem(links_.get(), &ifindex) && errno != ENOENT)
        return os_error("erase ifindex " + std::to_string(ifindex) + " from " + kLinksMap);
    return ok();
}

} // namespace vpnmeter
