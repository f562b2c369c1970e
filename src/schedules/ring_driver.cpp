#include "schedules/ring_driver.hpp"

#include <cstdlib>
#include <string>

#include "core/error.hpp"

namespace lvx::sched {

namespace {

// LVX_INJECT_FAULT=rank:step makes that rank fail at that ring step: how the
// tests check that a failure mid-ring ends the job instead of hanging it.
int injected_fault_step(int rank) {
  const char* v = std::getenv("LVX_INJECT_FAULT");
  if (!v) return -1;
  const std::string s(v);
  const size_t colon = s.find(':');
  if (colon == std::string::npos || std::atoi(s.substr(0, colon).c_str()) != rank) return -1;
  return std::atoi(s.c_str() + colon + 1);
}

}  // namespace

void run_ring(ScheduleEnv& env, ComputeTimer& timer, const RingSpec& spec) {
  const Plan& p = env.plan;
  const int fault_step = injected_fault_step(p.rank);
  Transport& tr = *env.transport;
  const int nx = next_rank(p), pv = prev_rank(p);
  int64_t max_rows = 0;
  for (int64_t r : spec.rows) max_rows = std::max(max_rows, r);

  // Two buffers of each kind: one in use by compute or a send, one receiving.
  std::vector<size_t> offset;
  size_t in_bytes = 0;
  for (const auto& t : spec.inputs) {
    offset.push_back(in_bytes);
    in_bytes += (max_rows * t.row_bytes + 255) / 256 * 256;
  }
  const size_t acc_bytes = max_rows * spec.acc_row_bytes;
  char* in_buf[2];
  char* acc_buf[2];
  char* inc_buf[2];
  for (int b = 0; b < 2; ++b) {
    const std::string id = spec.name + "." + std::to_string(b);
    in_buf[b] = static_cast<char*>(env.workspace.get(id + ".in", in_bytes));
    acc_buf[b] = acc_bytes ? static_cast<char*>(env.workspace.get(id + ".acc", acc_bytes)) : nullptr;
    inc_buf[b] = acc_bytes ? static_cast<char*>(env.workspace.get(id + ".inc", acc_bytes)) : nullptr;
  }

  std::vector<const void*> cur(spec.inputs.size());
  for (size_t k = 0; k < spec.inputs.size(); ++k) cur[k] = spec.inputs[k].own;
  // Per step at most two groups, posted in the same order on every rank so that
  // transports without tags (NCCL) match them pairwise: the prefetch, then the
  // accumulator hop (this step's partial out, the next step's accumulator in).
  // The two directions of a hop share one group: a receive queued ahead of a
  // send on a stream would wait on the ring all the way round.
  int hop = -1;
  for (int t = 0; t < p.P; ++t) {
    const int i = ring_block(p, t), ib = ring_block(p, t + 1);
    const int nb = (t + 1) % 2, cb = t % 2;
    if (t == fault_step) LVX_FAIL(Status::internal, "fault injected at ring step " + std::to_string(t));
    int prefetch = -1;
    if (t < p.P - 1) {
      std::vector<Message> sends, recvs;
      for (size_t k = 0; k < spec.inputs.size(); ++k) {
        const Traveler& tv = spec.inputs[k];
        if (!tv.row_bytes) continue;
        sends.push_back({nx, const_cast<void*>(cur[k]), spec.rows[i] * tv.row_bytes, tv.tag});
        recvs.push_back({pv, in_buf[nb] + offset[k], spec.rows[ib] * tv.row_bytes, tv.tag});
      }
      prefetch = tr.post(sends, recvs);
    }
    timer.begin();
    spec.compute(i, cur, acc_bytes ? acc_buf[cb] : nullptr);
    timer.end();
    if (acc_bytes) {
      if (t > 0) {
        tr.wait(hop);  // brings this step's accumulator; frees acc_buf[nb] for the next step
        timer.begin();
        spec.combine(i, acc_buf[cb], inc_buf[cb]);
        timer.end();
      }
      // At t = P−1 the partial goes home to its owner, and this rank's own arrives.
      hop = tr.post({{nx, acc_buf[cb], spec.rows[i] * spec.acc_row_bytes, spec.acc_tag}},
                    {{pv, inc_buf[nb], spec.rows[ib] * spec.acc_row_bytes, spec.acc_tag}});
    }
    if (prefetch >= 0) {
      tr.wait(prefetch);
      for (size_t k = 0; k < spec.inputs.size(); ++k)
        cur[k] = spec.inputs[k].row_bytes ? in_buf[nb] + offset[k] : nullptr;
    }
    env.stats.steps++;
  }
  if (acc_bytes) {
    tr.wait(hop);
    timer.begin();
    spec.finish(inc_buf[p.P % 2]);
    timer.end();
  }
  tr.drain();
}

}  // namespace lvx::sched
