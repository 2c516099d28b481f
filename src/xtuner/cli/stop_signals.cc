#include "cli/stop_signals.h"

#include <pthread.h>

#include <cstdio>
#include <ctime>

namespace xt::cli {

StopSignals::StopSignals(std::function<void()> on_first) {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, &old_);
  watcher_ = std::thread([this, on_first = std::move(on_first)] {
    int received = 0;
    const timespec tick{0, 100 * 1000 * 1000};  // look at done_ ten times a second
    while (!done_.load()) {
      const int sig = sigtimedwait(&set_, nullptr, &tick);
      if (sig <= 0) continue;
      if (++received == 1) {
        std::fprintf(stderr,
                     "\n%s: stopping after this step and saving a checkpoint (again to "
                     "quit now)\n",
                     sig == SIGINT ? "interrupt" : "terminate");
        on_first();
        continue;
      }
      // The second one: die by it, as without this class.
      std::signal(sig, SIG_DFL);
      pthread_sigmask(SIG_UNBLOCK, &set_, nullptr);
      raise(sig);
    }
  });
}

StopSignals::~StopSignals() {
  done_.store(true);
  watcher_.join();
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

}  // namespace xt::cli
