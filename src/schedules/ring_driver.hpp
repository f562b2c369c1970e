// The one ring loop behind lvx and ring, forward and backward. Each rank keeps
// a stationary part; blocks of "traveling inputs" (Q or K/V and their companions)
// rotate to the next rank each step and are prefetched one step ahead, and an
// optional accumulator follows its inputs one step behind:
//
//   step t on rank r holds block i = (r − t) mod P
//     post  send of block i / receive of block i−1       (prefetch, overlapped)
//     issue compute(i) into a fresh partial accumulator  (no communication needed)
//     wait  the previous hop: block i's accumulator; combine it into the partial
//     post  the hop: partial to r+1 (at t = P−1 it goes home), next one from r−1
//
// so each transfer overlaps the next step's compute. After P steps a rank has
// received its own block's finished accumulator.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "schedules/schedules.hpp"

namespace lvx::sched {

struct Traveler {
  const void* own = nullptr;  // this rank's block
  size_t row_bytes = 0;       // bytes per row of the block (block bytes = rows × row_bytes)
  int tag = 0;
};

struct RingSpec {
  std::string name;                  // workspace prefix
  std::vector<int64_t> rows;         // rows of each rank's block
  std::vector<Traveler> inputs;
  size_t acc_row_bytes = 0;          // 0: no traveling accumulator
  int acc_tag = kTagAcc;
  // Issues step kernels for block i; acc is null without an accumulator and
  // must be initialized by compute (it holds stale data).
  std::function<void(int block, const std::vector<const void*>& in, void* acc)> compute;
  std::function<void(int block, void* acc, const void* incoming)> combine;
  std::function<void(void* own_acc)> finish;  // this rank's finished accumulator
};

void run_ring(ScheduleEnv& env, ComputeTimer& timer, const RingSpec& spec);

}  // namespace lvx::sched
