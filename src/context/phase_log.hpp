// The stats of one phase (forward or backward) over calls. A call's device timing is
// read only when stats are asked for, so calls never wait for the device; at most
// kMaxPending calls stay unread (older ones are read then, long finished).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

#include "core/backend.hpp"
#include "schedules/schedules.hpp"

namespace lvx {

class PhaseLog {
 public:
  struct Totals {
    PhaseStats sum;
    int64_t calls = 0;
  };
  static constexpr size_t kMaxPending = 32;
  void add(const PhaseStats& stats, PhaseTiming timing, Backend& be);
  const PhaseStats& last(Backend& be);
  Totals totals(Backend& be);
  void reset_totals(Backend& be);

 private:
  struct Pending {
    PhaseStats stats;
    PhaseTiming timing;
  };
  void read_oldest(Backend& be);
  std::deque<Pending> pending_;
  PhaseStats last_;
  Totals totals_;
};

}  // namespace lvx
