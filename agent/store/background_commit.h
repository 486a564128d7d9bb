// A cycle's Store::commit on a thread of its own, begun as soon as the
// cycle's usage is final (Reconciler::plan's usage_final) while the rest of
// it is still being planned: the store writes the usage meanwhile, and the
// quota records, then everything else, are promised to it as they are done.
#pragma once

#include <future>

#include "store.h"

namespace vpnmeter {

class BackgroundCommit {
public:
    BackgroundCommit() = default;
    BackgroundCommit(const BackgroundCommit&) = delete;
    BackgroundCommit& operator=(const BackgroundCommit&) = delete;
    // Gone before both parts were delivered (an exception unwinding): they
    // are refused, so nothing is written, and the thread is waited for.
    ~BackgroundCommit()
    {
        if (!started()) return;
        refuse(quotas_, quotas_given_);
        refuse(rest_, rest_given_);
        done_.wait();
    }

    // `cycle` must stay alive, and what is still promised unchanged by
    // anyone else once given, until wait() returns.
    void start(Store& store, const CycleCommit& cycle, StoreFailure* failure = nullptr)
    {
        done_ = std::async(std::launch::async,
                           [&store, &cycle, failure, quotas = quotas_.get_future().share(),
                            rest = rest_.get_future().share()] { return store.commit(cycle, failure, quotas, rest); });
    }
    bool started() const { return done_.valid(); }
    // cycle.quota_usage and alerts_fired are filled in (false: never will be).
    void quotas_planned(bool planned) { give(quotas_, quotas_given_, planned); }
    // Everything else of the cycle is.
    void rest_planned(bool planned) { give(rest_, rest_given_, planned); }
    // The commit's result; refuses what was not given first.
    Status wait()
    {
        if (!started()) return Error{"commit: never started"};
        refuse(quotas_, quotas_given_);
        refuse(rest_, rest_given_);
        return done_.get();
    }

private:
    static void give(std::promise<bool>& promise, bool& given, bool planned)
    {
        if (given) return;
        promise.set_value(planned);
        given = true;
    }
    static void refuse(std::promise<bool>& promise, bool& given) { give(promise, given, false); }

    std::promise<bool> quotas_, rest_;
    bool quotas_given_ = false, rest_given_ = false;
    std::future<Status> done_;
};

} // namespace vpnmeter
