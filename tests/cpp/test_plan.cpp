// The planner's decisions and the front door's checks, without MPI: the transport for
// every rank's capabilities, lvx's form for that transport, a one-rank plan, and the
// validation of a call (q_ranges summarized through the backend).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "plan/cost_model.hpp"
#include "plan/planner.hpp"
#include "plan/validate.hpp"

namespace {

using namespace lvx;

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) ++failures;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

// The error a call raises ("" when it returns), with its status.
std::string error_of(const std::function<void()>& fn, Status* status = nullptr) {
  try {
    fn();
  } catch (const Error& e) {
    if (status) *status = e.status();
    return e.what();
  }
  return "";
}

void transports() {
  const TransportCaps all{true, true}, plain{false, false}, aware{false, true}, nccl_only{true, false};
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 1, {all}) == TransportKind::none,
        "one rank moves nothing");
  check(choose_transport(TransportKind::automatic, DeviceKind::cpu, 3, {all, all, all}) == TransportKind::mpi,
        "host buffers: MPI");
  Status st{};
  check(error_of([&] { choose_transport(TransportKind::nccl, DeviceKind::cpu, 2, {all, all}); }, &st).find("needs CUDA") !=
                std::string::npos && st == Status::invalid_argument,
        "NCCL for host buffers is an invalid argument");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {all, all}) == TransportKind::nccl,
        "auto on GPUs: NCCL where every rank has it");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {nccl_only, plain}) == TransportKind::mpi_staged,
        "auto on GPUs, one rank without NCCL: MPI, staged");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {aware, aware}) == TransportKind::mpi_direct,
        "auto on GPUs without NCCL, every MPI CUDA-aware: MPI direct");
  check(choose_transport(TransportKind::mpi, DeviceKind::cuda, 2, {all, nccl_only}) == TransportKind::mpi_staged,
        "MPI asked, one rank's MPI not CUDA-aware: staged on every rank");
  check(error_of([&] { choose_transport(TransportKind::nccl, DeviceKind::cuda, 2, {all, aware}); }, &st)
                    .find("no NCCL") != std::string::npos &&
            st == Status::unsupported,
        "NCCL asked where a rank lacks it: unsupported");
  check(moves_device_memory(TransportKind::nccl) && moves_device_memory(TransportKind::mpi_direct) &&
            !moves_device_memory(TransportKind::mpi_staged) && !moves_device_memory(TransportKind::mpi),
        "device-direct transports: NCCL and CUDA-aware MPI");
}

Plan four_ranks(int64_t lq, int64_t lkv) {
  Plan p;
  p.B = 1;
  p.Hq = 16;
  p.Hkv = 16;
  p.D = 128;
  p.dtype = DType::bf16;
  p.set_rows({lq, lq, lq, lq}, {lkv, lkv, lkv, lkv});
  return p;
}

void lvx_forms() {
  const Settings automatic{};
  const Plan few_queries = four_ranks(256, 16384), many_queries = four_ranks(4096, 1024);
  check(choose_lvx_form(few_queries, automatic, false) == LvxForm::ring,
        "auto: the ring form through host staging (the transport that runs decides)");
  check(choose_lvx_form(few_queries, automatic, true) == LvxForm::single,
        "auto: gathered over a direct transport; single when Lkv·Hkv >= 1.5 · others' Lq·Hq");
  check(choose_lvx_form(many_queries, automatic, true) == LvxForm::overlap, "auto: overlap when the gather is long");
  Settings small = automatic;
  small.gather_max_bytes = 1;
  check(choose_lvx_form(few_queries, small, true) == LvxForm::ring, "auto: ring when the gathered buffers do not fit");
  check(choose_lvx_form(few_queries, Settings{GatherMode::overlap, 0}, false) == LvxForm::overlap &&
            choose_lvx_form(few_queries, Settings{GatherMode::any, 0}, false) == LvxForm::single &&
            choose_lvx_form(few_queries, Settings{GatherMode::ring, 0}, true) == LvxForm::ring,
        "forced forms hold on any transport");
}

void one_rank_plan() {
  Planner planner(MPI_COMM_NULL);
  LocalProblem l;
  l.B = 2;
  l.Lq = 5;
  l.Lkv = 7;
  l.Hq = 4;
  l.Hkv = 2;
  l.D = 16;
  l.scale = 0.25f;
  l.algorithm = Algorithm::automatic;
  const Plan p = planner.plan(l);
  check(p.P == 1 && p.transport == TransportKind::none && p.algorithm != Algorithm::automatic &&
            p.lvx_form == LvxForm::ring && p.lq_total == 5 && p.lkv_total == 7 && p.scale == 0.25f,
        "one rank: no transport, auto resolved, the ring form");
  Status st{};
  check(error_of([&] { planner.plan(l, "q is wrong"); }, &st) == "q is wrong" && st == Status::invalid_argument,
        "a local error fails the plan with its text");
  l.max_range_end = 8;
  check(error_of([&] { planner.plan(l); }).find("exceeds the global KV length 7") != std::string::npos,
        "q_ranges past the global KV length");
}

void front_door() {
  auto be = make_cpu_backend(1);
  auto call = [] {
    Problem c;
    c.B = 1;
    c.Lq = 3;
    c.Lkv = 4;
    c.Hq = 2;
    c.Hkv = 1;
    c.D = 8;
    c.scale = std::numeric_limits<float>::quiet_NaN();
    return c;
  };
  LocalProblem l;
  Problem c = call();
  check(validate(c, *be, &l).empty() && std::fabs(l.scale - 1.f / std::sqrt(8.f)) < 1e-7f && !l.has_ranges,
        "a good call passes; NaN scale is 1/sqrt(D)");
  const std::vector<std::pair<std::function<void(Problem&)>, std::string>> bad = {
      {[](Problem& c) { c.B = 0; }, "batch size must be >= 1"},
      {[](Problem& c) { c.Hq = 3; c.Hkv = 2; }, "must be a positive multiple of KV heads"},
      {[](Problem& c) { c.D = 300; }, "head dim must be in [1, 256]"},
      {[](Problem& c) { c.dtype = static_cast<DType>(7); }, "unknown dtype"},
      {[](Problem& c) { c.algorithm = static_cast<Algorithm>(-1); }, "unknown algorithm"},
      {[](Problem& c) { c.scale = std::numeric_limits<float>::infinity(); }, "scale must be finite"},
  };
  for (const auto& [change, want] : bad) {
    Problem b = call();
    change(b);
    const std::string got = validate(b, *be, &l);
    check(got.find(want) != std::string::npos, "rejects: " + want + " (" + got + ")");
  }
  std::vector<int32_t> ranges = {0, 4, 2, 3, 1, 1};
  c.q_ranges = ranges.data();
  check(validate(c, *be, &l).empty() && l.has_ranges && l.max_range_end == 4, "q_ranges: the largest end");
  ranges[2] = -1;
  check(validate(c, *be, &l).find("begin must be >= 0, got -1") != std::string::npos, "q_ranges: a negative begin");
  ranges[2] = 3;
  ranges[3] = 2;
  check(validate(c, *be, &l).find("(1 rows have begin > end)") != std::string::npos, "q_ranges: a reversed row");
}

}  // namespace

int main() {
  transports();
  lvx_forms();
  one_rank_plan();
  front_door();
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
