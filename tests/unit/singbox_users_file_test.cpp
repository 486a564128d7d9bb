#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "singbox/users_file.h"
#include "test_support.h"

using namespace vpnmeter;
using namespace vpnmeter::singbox;
using vpnmeter::testing::TempDir;

namespace {

const char* kSingBox = R"({
  "log": {"level": "info"},
  "inbounds": [
    {"type": "vless", "tag": "vless-in", "listen_port": 443,
     "users": [{"name": "alice", "uuid": "11111111-1111-1111-1111-111111111111"},
               {"name": "bob", "uuid": "22222222-2222-2222-2222-222222222222"}]},
    {"type": "trojan", "tag": "trojan-in", "users": [{"name": "alice", "password": "pw"}]}
  ],
  "outbounds": [{"type": "direct"}]
})";

const char* kV2Ray = R"({"inbounds": [{"protocol": "vmess", "port": 10086,
  "settings": {"clients": [{"id": "33333333-3333-3333-3333-333333333333", "email": "carol"}]}}]})";

nlohmann::json read(const std::string& path)
{
    std::ifstream in(path);
    return nlohmann::json::parse(in);
}

std::vector<std::string> names(const nlohmann::json& list, const char* key)
{
    std::vector<std::string> out;
    for (const auto& e : list) out.push_back(e[key]);
    return out;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

} // namespace

TEST_CASE("UsersFile: block takes a user out of every inbound, unblock puts them back")
{
    TempDir dir;
    const std::string path = dir.path() + "/config.json";
    write(path, kSingBox);
    ::chmod(path.c_str(), 0640);
    UsersFile file(path);

    REQUIRE(file.block("alice").value());
    auto config = read(path);
    CHECK(names(config["inbounds"][0]["users"], "name") == std::vector<std::string>{"bob"});
    CHECK(config["inbounds"][1]["users"].empty());
    CHECK(config["log"]["level"] == "info"); // the rest untouched
    CHECK(file.blocked().value() == std::set<std::string>{"alice"});
    CHECK(std::filesystem::exists(path + ".bak"));
    CHECK(read(path + ".bak") == nlohmann::json::parse(kSingBox));
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0640); // mode kept

    CHECK_FALSE(file.block("alice").value()); // already out: nothing to do
    REQUIRE(file.unblock("alice").value());
    config = read(path);
    CHECK(names(config["inbounds"][0]["users"], "name") == std::vector<std::string>{"bob", "alice"});
    CHECK(config["inbounds"][0]["users"][1]["uuid"] == "11111111-1111-1111-1111-111111111111");
    CHECK(names(config["inbounds"][1]["users"], "name") == std::vector<std::string>{"alice"});
    CHECK(file.blocked().value().empty());
    CHECK_FALSE(file.unblock("alice").value());
}

TEST_CASE("UsersFile: V2Ray/Xray clients by email")
{
    TempDir dir;
    const std::string path = dir.path() + "/config.json";
    write(path, kV2Ray);
    UsersFile file(path);
    REQUIRE(file.block("carol").value());
    CHECK(read(path)["inbounds"][0]["settings"]["clients"].empty());
    REQUIRE(file.unblock("carol").value());
    CHECK(read(path)["inbounds"][0]["settings"]["clients"][0]["email"] == "carol");
}

TEST_CASE("UsersFile: an unknown user changes nothing; a crash between the two writes heals")
{
    TempDir dir;
    const std::string path = dir.path() + "/config.json";
    write(path, kSingBox);
    UsersFile file(path);
    CHECK_FALSE(file.block("mallory").value());
    CHECK(read(path) == nlohmann::json::parse(kSingBox));
    CHECK_FALSE(std::filesystem::exists(file.sidecar_path()));

    // Blocked, then the config restored by hand (or a crash before its
    // write): alice is in the sidecar but present, so not blocked, and
    // blocking again keeps one copy of her entry.
    REQUIRE(file.block("alice").value());
    write(path, kSingBox);
    CHECK(file.blocked().value().empty());
    REQUIRE(file.block("alice").value());
    CHECK(read(file.sidecar_path())["removed"].size() == 2); // one per inbound
    REQUIRE(file.unblock("alice").value());
    CHECK(read(path)["inbounds"][1]["users"].size() == 1);
}

TEST_CASE("UsersFile: errors name the file")
{
    TempDir dir;
    UsersFile missing(dir.path() + "/none.json");
    auto result = missing.block("alice");
    REQUIRE_FALSE(result);
    CHECK_THAT(result.error().message(), Catch::Contains("none.json"));
    write(dir.path() + "/bad.json", "{ not json");
    auto bad = UsersFile(dir.path() + "/bad.json").blocked();
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message(), Catch::Contains("bad.json: not a JSON object"));
}

#include <chrono>
#include <thread>

#include "singbox/actions.h"

namespace {

// Waits up to 10 s for `path` to have `lines` lines; returns them.
std::vector<std::string> lines_of(const std::string& path, size_t lines)
{
    std::vector<std::string> out;
    for (int i = 0; i < 500; ++i) {
        out.clear();
        std::ifstream in(path);
        for (std::string line; std::getline(in, line);) out.push_back(line);
        if (out.size() >= lines) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return out;
}

} // namespace

TEST_CASE("Actions: a user name reaches commands as one argument, never through a shell", "[singbox][security]")
{
    TempDir dir;
    const std::string evil = "eve; touch " + dir.path() + "/pwned $(id) `id`";
    const std::string config = dir.path() + "/config.json";
    write(config, R"({"inbounds": [{"type": "vless", "users": [{"name": )" + nlohmann::json(evil).dump() +
                      R"(, "uuid": "u"}]}]})");
    const std::string recorder = dir.path() + "/recorder.py";
    write(recorder, "import json, sys\nopen(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')\n");

    SingboxInstance instance;
    instance.name = "sb1";
    instance.config_file = config;
    instance.reload_command = {"/usr/bin/python3", recorder, dir.path() + "/reloads", "reload"};
    instance.command = {"/usr/bin/python3", recorder, dir.path() + "/actions"};
    {
        Actions actions(instance);
        CHECK(actions.configured());
        actions.apply({{evil, Wanted{Wanted::Mode::block, 0, 0, "blocked"}}});
        actions.apply({{evil, Wanted{Wanted::Mode::block, 0, 0, "blocked"}}}); // no change: nothing runs
        CHECK(actions.blocked() == std::set<std::string>{evil});
        const auto calls = lines_of(dir.path() + "/actions", 1);
        REQUIRE(calls.size() == 1);
        CHECK(nlohmann::json::parse(calls[0]) == nlohmann::json::array({"block", evil, "sb1"}));
        CHECK(lines_of(dir.path() + "/reloads", 1).size() == 1);
        CHECK(read(config)["inbounds"][0]["users"].empty());
    }
    CHECK_FALSE(std::filesystem::exists(dir.path() + "/pwned"));

    // A restarted agent knows from the files that eve is blocked.
    Actions again(instance);
    CHECK(again.blocked() == std::set<std::string>{evil});
    again.apply({{evil, Wanted{Wanted::Mode::throttle, 1'000'000, 500'000, "throttled"}}});
    const auto calls = lines_of(dir.path() + "/actions", 3);
    REQUIRE(calls.size() == 3);
    CHECK(nlohmann::json::parse(calls[1]) == nlohmann::json::array({"unblock", evil, "sb1"}));
    CHECK(nlohmann::json::parse(calls[2]) == nlohmann::json::array({"throttle", evil, "sb1"}));
    CHECK(read(config)["inbounds"][0]["users"][0]["name"] == evil);
}
