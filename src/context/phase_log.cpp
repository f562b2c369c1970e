#include "context/phase_log.hpp"

#include <utility>

namespace lvx {

void PhaseLog::add(const PhaseStats& stats, PhaseTiming timing, Backend& be) {
  pending_.push_back({stats, std::move(timing)});
  while (pending_.size() > kMaxPending) read_oldest(be);
}

void PhaseLog::read_oldest(Backend& be) {
  Pending& p = pending_.front();
  PhaseStats s = p.stats;
  const PhaseTiming& t = p.timing;
  if (t.start >= 0 && t.end >= 0) s.total_s = be.elapsed_s(t.start, t.end);
  for (auto [a, b] : t.compute) s.compute_s += be.elapsed_s(a, b);
  for (auto [a, b] : t.stalls) s.blocked_s += be.elapsed_s(a, b);
  p.timing.release(be);
  pending_.pop_front();
  last_ = s;
  totals_.calls++;
  totals_.sum.bytes_sent += s.bytes_sent;
  totals_.sum.bytes_recv += s.bytes_recv;
  totals_.sum.compute_s += s.compute_s;
  totals_.sum.blocked_s += s.blocked_s;
  totals_.sum.total_s += s.total_s;
  totals_.sum.steps += s.steps;
}

const PhaseStats& PhaseLog::last(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  return last_;
}

PhaseLog::Totals PhaseLog::totals(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  return totals_;
}

void PhaseLog::reset_totals(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  totals_ = Totals{};
}

}  // namespace lvx
