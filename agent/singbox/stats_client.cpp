#include "singbox/stats_client.h"

#include <grpcpp/grpcpp.h>

#include <ctime>

#include "v2ray_stats.grpc.pb.h"

namespace vpnmeter::singbox {

namespace api = v2ray::core::app::stats::command;

struct StatsClient::Stub {
    std::unique_ptr<api::StatsService::Stub> service;
};

StatsClient::StatsClient(const std::string& target) : stub_(std::make_unique<Stub>()), target_(target)
{
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    stub_->service = api::StatsService::NewStub(channel);
}

StatsClient::~StatsClient() = default;

namespace {

Error rpc_error(const std::string& what, const std::string& target, const grpc::Status& status)
{
    static constexpr const char* names[] = {"OK",
                                            "CANCELLED",
                                            "UNKNOWN",
                                            "INVALID_ARGUMENT",
                                            "DEADLINE_EXCEEDED",
                                            "NOT_FOUND",
                                            "ALREADY_EXISTS",
                                            "PERMISSION_DENIED",
                                            "RESOURCE_EXHAUSTED",
                                            "FAILED_PRECONDITION",
                                            "ABORTED",
                                            "OUT_OF_RANGE",
                                            "UNIMPLEMENTED",
                                            "INTERNAL",
                                            "UNAVAILABLE",
                                            "DATA_LOSS",
                                            "UNAUTHENTICATED"};
    const auto code = static_cast<size_t>(status.error_code());
    return Error{what + " at " + target + ": " + (code < std::size(names) ? names[code] : "code " + std::to_string(code)) +
                 (status.error_message().empty() ? "" : " (" + status.error_message() + ")")};
}

} // namespace

Result<StatsReading> StatsClient::read(std::chrono::milliseconds timeout)
{
    const auto deadline = std::chrono::system_clock::now() + timeout;
    StatsReading reading;

    api::QueryStatsRequest query;
    query.set_pattern(kUserCounterPattern); // older servers
    query.add_patterns(kUserCounterPattern); // newer ones
    query.set_reset(false);
    api::QueryStatsResponse stats;
    grpc::ClientContext query_context;
    query_context.set_deadline(deadline);
    if (auto status = stub_->service->QueryStats(&query_context, query, &stats); !status.ok())
        return rpc_error("QueryStats", target_, status);
    reading.time = static_cast<int64_t>(std::time(nullptr));
    for (const auto& stat : stats.stat()) reading.counters[stat.name()] = stat.value();

    if (has_uptime_) {
        api::SysStatsResponse sys;
        grpc::ClientContext sys_context;
        sys_context.set_deadline(deadline);
        auto status = stub_->service->GetSysStats(&sys_context, api::SysStatsRequest(), &sys);
        if (status.ok()) reading.uptime = sys.uptime();
        else if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) has_uptime_ = false;
        else return rpc_error("GetSysStats", target_, status);
    }
    return reading;
}

} // namespace vpnmeter::singbox
