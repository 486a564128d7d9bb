// Errors at OS and library boundaries as values.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace vpnmeter {

// What was being done, and the errno it failed with (0 when not an OS error).
struct Error {
    std::string context;
    int code = 0;

    // "attach tc ingress on tun0: Operation not permitted"
    std::string message() const
    {
        return code ? context + ": " + std::strerror(code) : context;
    }
};

// libbpf and friends return -errno; plain syscalls set errno.
inline Error os_error(std::string context, int err = errno)
{
    return Error{std::move(context), err < 0 ? -err : err};
}

template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() & { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const T& value() const& { return std::get<0>(v_); }
    T* operator->() { return &value(); }
    T& operator*() { return value(); }
    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok() { return Ok{}; }

} // namespace vpnmeter
