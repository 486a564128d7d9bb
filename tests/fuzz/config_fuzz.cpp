// The YAML configuration, as vpnmeterd --check-config and SIGHUP read it:
// the whole input is the file. A bad file must come out as a ConfigError
// (which the daemon reports and exits on, or on reload keeps the running
// config); any other exception would end the daemon, so it is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const vpnmeter::Config config = vpnmeter::parse_config(text, "fuzz.yaml");
        if (config.interfaces.empty()) std::abort(); // required: parse_config says so
        for (const auto& name : config.interfaces) (void)vpnmeter::interface_selected(config, name);
    } catch (const vpnmeter::ConfigError& e) {
        if (std::string(e.what()).rfind("fuzz.yaml", 0) != 0) std::abort(); // errors name the file first
    }
    return 0;
}
