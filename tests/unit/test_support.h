// Helpers shared by the unit tests.
#pragma once

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "config.h"

namespace vpnmeter::testing {

// The message of the ConfigError parsing `text` (as "test.yaml") raises; the
// test fails if it raises none.
inline std::string config_error(const std::string& text)
{
    try {
        parse_config(text, "test.yaml");
    } catch (const ConfigError& e) {
        return e.what();
    }
    FAIL("expected a ConfigError for:\n" << text);
    return {};
}

// A fresh directory under /tmp, removed when the test ends (also on failure).
class TempDir {
public:
    explicit TempDir(const std::string& prefix = "vpnmeter-test")
    {
        std::string name = "/tmp/" + prefix + "-XXXXXX";
        if (!mkdtemp(name.data())) FAIL("mkdtemp: " << std::strerror(errno));
        path_ = name;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir()
    {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// A file under tests/fixtures/, byte for byte.
inline std::string fixture(const std::string& relative_path)
{
    std::ifstream in(std::string(VPNMETER_SOURCE_DIR) + "/tests/fixtures/" + relative_path, std::ios::binary);
    REQUIRE(in);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

} // namespace vpnmeter::testing
