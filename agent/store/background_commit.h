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
        refuse_undelivered();
        done_.wait();
    }

    // `cycle` must stay alive, and what is still promised unchanged by
    // anyone else once given, until wait() returns.
    void start(Store& store, const CycleCommit& cycle, StoreFailure* failure = nullptr)
    {
        done_ = std::async(std::launch::async, [&store, &cycle, failure, quotas = quotas_.future(),
                                                rest = rest_.future()] {
            return store.commit(cycle, failure, quotas, rest);
        });
    }
    bool started() const { return done_.valid(); }
    // cycle.quota_usage and alerts_fired are filled in (false: never will be).
    void quotas_planned(bool planned) { quotas_.give(planned); }
    // Everything else of the cycle is.
    void rest_planned(bool planned) { rest_.give(planned); }
    // The commit's result; refuses what was not given first.
    Status wait()
    {
        if (!started()) return Error{"commit: never started"};
        refuse_undelivered();
        return done_.get();
    }

private:
    // A part of the cycle promised to the commit, given once.
    class Part {
    public:
        std::shared_future<bool> future() { return promise_.get_future().share(); }
        void give(bool planned)
        {
            if (given_) return;
            promise_.set_value(planned);
            given_ = true;
        }

    private:
        std::promise<bool> promise_;
        bool given_ = false;
    };
    void refuse_undelivered()
    {
        quotas_.give(false);
        rest_.give(false);
    }

    Part quotas_, rest_;
    std::future<Status> done_;
};

} // namespace vpnmeter
