// Distributed forward/backward schedules, written once against a Backend and a
// Transport (DESIGN.md, "Algorithms"). Each fills PhaseStats for its call.
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "plan/plan.hpp"
#include "transport/transport.hpp"
#include "core/workspace.hpp"

namespace lvx {

struct PhaseStats {
  uint64_t bytes_sent = 0, bytes_recv = 0;
  double compute_s = 0, blocked_s = 0, total_s = 0;
  int steps = 0;
};

// A phase's device timing as backend marks: the phase span, its compute spans and
// the compute stream's stalls on transfers. Reading them waits for the device, so
// they are read only when someone asks for the stats (PhaseLog, context/phase_log.hpp) and
// a call returns as soon as its work is issued.
struct PhaseTiming {
  int start = -1, end = -1;
  std::vector<std::pair<int, int>> compute, stalls;
  void release(Backend& be);  // frees the marks without reading them
};

struct ForwardIO {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* q_ranges = nullptr;  // null when the plan has no ranges
  void* o = nullptr;                  // storage dtype [B, Lq, Hq, D]
  float* lse = nullptr;               // [B, Hq, Lq]
};

struct BackwardIO {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* q_ranges = nullptr;
  const void* o = nullptr;
  const float* lse = nullptr;
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

// Everything a schedule needs; transport is null when P == 1.
struct ScheduleEnv {
  const Plan& plan;
  Backend& backend;
  Transport* transport;
  Workspace& workspace;
  PhaseStats& stats;    // host-side counts, final when the schedule returns
  PhaseTiming& timing;  // device timing, read later
};

// The plan's schedule: the one-rank one when P == 1, else the algorithm's.
void run_schedule(ScheduleEnv& env, const ForwardIO& io);
void run_schedule(ScheduleEnv& env, const BackwardIO& io);

// One rank: plain local attention, whatever the algorithm.
void single_rank_forward(ScheduleEnv& env, const ForwardIO& io);
void single_rank_backward(ScheduleEnv& env, const BackwardIO& io);
// The schedules below need P > 1 (lvx.cpp, ring.cpp, ulysses.cpp).
void lvx_schedule_forward(ScheduleEnv& env, const ForwardIO& io);
void lvx_schedule_backward(ScheduleEnv& env, const BackwardIO& io);
void ring_schedule_forward(ScheduleEnv& env, const ForwardIO& io);
void ring_schedule_backward(ScheduleEnv& env, const BackwardIO& io);
void ulysses_schedule_forward(ScheduleEnv& env, const ForwardIO& io);
void ulysses_schedule_backward(ScheduleEnv& env, const BackwardIO& io);

// Shared pieces (common.cpp).
namespace sched {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();  // an empty LSE

constexpr int kTagQ = 11, kTagRanges = 12, kTagAcc = 13, kTagLse = 14, kTagDout = 15,
              kTagDl = 16, kTagK = 17, kTagV = 18, kTagDk = 19, kTagA2A = 21;

// Marks backend work between begin() and end() as compute (PhaseTiming::compute).
class ComputeTimer {
 public:
  explicit ComputeTimer(Backend& b) : backend_(b) {}
  void begin() { start_ = backend_.mark(); }
  void end() { spans.emplace_back(start_, backend_.mark()); }
  std::vector<std::pair<int, int>> spans;

 private:
  Backend& backend_;
  int start_ = -1;
};

// Local single-process attention (P == 1, or the head-sharded part of ulysses).
void local_forward(Backend& be, Workspace& ws, const StepShape& s, DType dtype, float scale,
                   const ForwardIO& io, ComputeTimer& timer);
// With dl given (Dl = rowsum(dO ∘ O) already computed), io.o is not read.
void local_backward(Backend& be, Workspace& ws, const StepShape& s, DType dtype, float scale,
                    const BackwardIO& io, ComputeTimer& timer, const float* dl = nullptr);

// Starts a phase and closes it into env.stats and env.timing without waiting for
// the device; a phase left by an exception releases its marks.
struct PhaseScope {
  ScheduleEnv& env;
  ComputeTimer timer;
  int start_mark;
  TransportCounters before;
  bool finished = false;
  explicit PhaseScope(ScheduleEnv& e);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;
  void finish();
};

inline int next_rank(const Plan& p) { return (p.rank + 1) % p.P; }
inline int prev_rank(const Plan& p) { return (p.rank + p.P - 1) % p.P; }
inline int ring_block(const Plan& p, int step) { return ((p.rank - step) % p.P + p.P) % p.P; }

}  // namespace sched
}  // namespace lvx
