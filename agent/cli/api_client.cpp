#include "cli/api_client.h"

#include <curl/curl.h>

#include <memory>

namespace vpnmeter {
namespace {

size_t collect(char* data, size_t size, size_t count, void* out)
{
    static_cast<std::string*>(out)->append(data, size * count);
    return size * count;
}

} // namespace

std::string api_base(const std::string& listen)
{
    std::string host = listen;
    if (host.rfind("0.0.0.0:", 0) == 0) host = "127.0.0.1:" + host.substr(8); // listening everywhere: ask locally
    return "http://" + host;
}

std::string url_segment(const std::string& text)
{
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out += static_cast<char>(c);
        else out += {'%', hex[c >> 4], hex[c & 15]};
    }
    return out;
}

Result<ApiReply> api_request(const std::string& method, const std::string& url, const std::string& body,
                             const std::string& token)
{
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
    if (!curl) return Error{"libcurl: cannot initialise"};
    ApiReply reply;
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    const std::string auth = "Authorization: Bearer " + token;
    if (!token.empty()) headers = curl_slist_append(headers, auth.c_str());
    std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_list(headers, curl_slist_free_all);
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &collect);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &reply.body);
    if (method != "GET") curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
    if (CURLcode rc = curl_easy_perform(curl.get()); rc != CURLE_OK)
        return Error{std::string("cannot reach the agent at ") + url + ": " + curl_easy_strerror(rc) +
                     " (is vpnmeterd running, and http.listen set?)"};
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &reply.status);
    return reply;
}

} // namespace vpnmeter
