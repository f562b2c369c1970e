// The planner's decisions and the front door's checks, without MPI: the transport for
// every rank's capabilities (mixed CUDA-awareness, shared GPUs), the cost-based choice
// among calibrated links, lvx's form for that transport, LVX_MPI_CUDA_AWARE, a one-rank
// plan, and the validation of a call (q_ranges summarized through the backend).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "plan/cost_model.hpp"
#include "plan/planner.hpp"
#include "plan/settings.hpp"
#include "transport/mpi_device_support.hpp"
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

TransportCaps caps(bool nccl, MpiDeviceAccess mpi, uint64_t gpu, const char* how = "") {
  return TransportCaps{nccl, mpi, gpu, how};
}

void transports() {
  using A = MpiDeviceAccess;
  const TransportCaps all = caps(true, A::yes, 1), plain = caps(false, A::none, 2), aware = caps(false, A::yes, 3),
                      nccl_only = caps(true, A::none, 4), all2 = caps(true, A::yes, 5);
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 1, {all}) == TransportKind::none,
        "one rank moves nothing");
  check(choose_transport(TransportKind::automatic, DeviceKind::cpu, 3, {all, all2, all}) == TransportKind::mpi,
        "host buffers: MPI");
  Status st{};
  check(error_of([&] { choose_transport(TransportKind::nccl, DeviceKind::cpu, 2, {all, all2}); }, &st)
                    .find("moves CUDA tensors") != std::string::npos &&
            st == Status::invalid_argument,
        "NCCL for host buffers is an invalid argument");
  check(error_of([&] { choose_transport(TransportKind::mpi_direct, DeviceKind::cpu, 2, {all, all2}); }, &st)
                    .find("host tensors go over 'mpi'") != std::string::npos,
        "mpi-direct for host buffers is an invalid argument");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {all, all2}) == TransportKind::nccl,
        "auto on GPUs: NCCL where every rank has it");
  check(transport_candidates(TransportKind::automatic, DeviceKind::cuda, 2, {all, all2}) ==
            std::vector<TransportKind>{TransportKind::nccl, TransportKind::mpi_direct, TransportKind::mpi_staged},
        "auto on GPUs: candidates NCCL, then mpi-direct, then mpi-staged");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {all, all}) == TransportKind::mpi_direct,
        "auto, ranks sharing one GPU: no NCCL (it refuses that); MPI direct");
  check(error_of([&] { choose_transport(TransportKind::nccl, DeviceKind::cuda, 2, {all, all}); }, &st)
                    .find("ranks 0 and 1 share one GPU") != std::string::npos &&
            st == Status::unsupported,
        "NCCL asked for ranks sharing one GPU: unsupported, naming them");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {nccl_only, plain}) == TransportKind::mpi_staged,
        "auto on GPUs, one rank without NCCL, no MPI takes CUDA buffers: MPI, staged");
  check(choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, {aware, aware}) == TransportKind::mpi_direct,
        "auto on GPUs without NCCL, every MPI CUDA-aware: MPI direct");
  check(choose_transport(TransportKind::mpi, DeviceKind::cuda, 2, {all, all2}) == TransportKind::mpi_direct,
        "MPI asked, every MPI CUDA-aware: direct");
  check(choose_transport(TransportKind::mpi, DeviceKind::cuda, 2, {plain, nccl_only}) == TransportKind::mpi_staged,
        "MPI asked, no MPI CUDA-aware: staged");
  check(choose_transport(TransportKind::mpi_staged, DeviceKind::cuda, 2, {all, nccl_only}) == TransportKind::mpi_staged,
        "mpi-staged asked runs whatever the MPIs can");
  // Mixed awareness: an error wherever MPI would move CUDA buffers, on every rank alike.
  const TransportCaps yes_forced = caps(false, A::yes, 6, "LVX_MPI_CUDA_AWARE=1"),
                      no_forced = caps(false, A::none, 7, "LVX_MPI_CUDA_AWARE=0");
  for (TransportKind asked : {TransportKind::mpi, TransportKind::automatic, TransportKind::mpi_direct}) {
    const std::string e = error_of([&] { choose_transport(asked, DeviceKind::cuda, 3, {yes_forced, no_forced, yes_forced}); }, &st);
    check(e.find("ranks disagree on whether their MPI takes CUDA buffers") != std::string::npos &&
              e.find("rank 1 (LVX_MPI_CUDA_AWARE=0)") != std::string::npos &&
              e.find("rank 0 (LVX_MPI_CUDA_AWARE=1), rank 2") != std::string::npos && st == Status::mismatch,
          std::string("mixed awareness, '") + name(asked) + "' asked: the same error naming the ranks");
  }
  {
    const std::vector<TransportCaps> mixed_nccl = {caps(true, A::yes, 1), caps(true, A::none, 2)};
    const std::string e = error_of([&] { choose_transport(TransportKind::automatic, DeviceKind::cuda, 2, mixed_nccl); }, &st);
    check(st == Status::mismatch && e.find("or 'nccl'") != std::string::npos,
          "mixed awareness under auto where NCCL could run: the same error (naming 'nccl' as a way out)");
    check(choose_transport(TransportKind::nccl, DeviceKind::cuda, 2, mixed_nccl) == TransportKind::nccl,
          "mixed awareness, 'nccl' asked: NCCL runs (MPI never moves CUDA buffers)");
  }
  check(error_of([&] { choose_transport(TransportKind::mpi, DeviceKind::cuda, 2, {caps(false, A::evidence, 1), plain}); },
                 &st)
                .find("ranks disagree") != std::string::npos,
        "evidence on one rank, none on another: mixed too");
  check(error_of([&] { choose_transport(TransportKind::mpi_direct, DeviceKind::cuda, 2, {plain, nccl_only}); }, &st)
                    .find("needs an MPI that takes CUDA buffers on every rank") != std::string::npos &&
            st == Status::unsupported,
        "mpi-direct asked where no MPI takes CUDA buffers: unsupported");
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

// The transport by calibrated link costs, lvx's form for the transport that runs.
void path_choice() {
  using A = MpiDeviceAccess;
  const std::vector<TransportCaps> gpus = {caps(true, A::yes, 1), caps(true, A::yes, 2), caps(true, A::yes, 3),
                                           caps(true, A::yes, 4)};
  const Plan p = four_ranks(1024, 16384);
  const Settings automatic{};
  CostParams c = make_cost_params(400e12, 100e9, 5e-6, {});
  PathChoice r = choose_path(p, TransportKind::automatic, DeviceKind::cuda, gpus, automatic, Algorithm::lvx, c);
  check(r.transport == TransportKind::nccl && r.lvx_form != LvxForm::ring,
        "no links calibrated: NCCL first, lvx gathered over it");
  set_link(c, TransportKind::nccl, 150e9, 20e-6);
  set_link(c, TransportKind::mpi_direct, 180e9, 10e-6);
  set_link(c, TransportKind::mpi_staged, 10e9, 30e-6);
  r = choose_path(p, TransportKind::automatic, DeviceKind::cuda, gpus, automatic, Algorithm::lvx, c);
  check(r.transport == TransportKind::mpi_direct && r.lvx_form != LvxForm::ring,
        "every link calibrated: the fastest predicted (mpi-direct), lvx gathered");
  set_link(c, TransportKind::mpi_direct, 1e9, 1e-3);
  r = choose_path(p, TransportKind::automatic, DeviceKind::cuda, gpus, automatic, Algorithm::lvx, c);
  check(r.transport == TransportKind::nccl, "a slow direct link: NCCL");
  set_link(c, TransportKind::mpi_staged, 500e9, 1e-6);
  r = choose_path(p, TransportKind::mpi, DeviceKind::cuda, gpus, automatic, Algorithm::lvx, c);
  check(r.transport == TransportKind::mpi_staged && r.lvx_form == LvxForm::ring,
        "'mpi' asked, staging priced faster: staged, and lvx's ring form for it");
  r = choose_path(p, TransportKind::mpi_staged, DeviceKind::cuda, gpus, automatic, Algorithm::lvx, make_cost_params(400e12, 100e9, 5e-6, {}));
  check(r.transport == TransportKind::mpi_staged && r.lvx_form == LvxForm::ring, "staged: lvx's ring form");
  r = choose_path(p, TransportKind::mpi_direct, DeviceKind::cuda, gpus, automatic, Algorithm::automatic, make_cost_params(400e12, 100e9, 5e-6, {}));
  check(r.transport == TransportKind::mpi_direct && r.algorithm != Algorithm::automatic &&
            (r.algorithm != Algorithm::lvx || r.lvx_form != LvxForm::ring),
        "direct, algorithm auto: resolved, lvx gathered if chosen");
  Plan uneven = p;
  uneven.set_rows({5000, 10, 0, 7}, {100, 90000, 5, 0});
  bool same = true;
  PathChoice first;
  for (int rank = 0; rank < 4; ++rank) {
    uneven.rank = rank;
    const PathChoice x = choose_path(uneven, TransportKind::automatic, DeviceKind::cuda, gpus, automatic, Algorithm::automatic, c);
    if (rank == 0) first = x;
    same = same && x.transport == first.transport && x.algorithm == first.algorithm && x.lvx_form == first.lvx_form;
  }
  check(same, "uneven shards: every rank makes the same choice");
  Status st{};
  check(error_of([&] { CostParams d; set_link(d, TransportKind::mpi, 1e9, 0); }, &st).find("links are for") !=
                std::string::npos &&
            error_of([&] { CostParams d; set_link(d, TransportKind::nccl, 0, 0); }).find("bytes_per_s > 0") !=
                std::string::npos,
        "links: for device transports, with positive rates");
}

// LVX_MPI_CUDA_AWARE: 0 or 1, anything else is an error of the rank's plan.
void mpi_cuda_aware_setting() {
  std::string error;
  unsetenv("LVX_MPI_CUDA_AWARE");
  check(read_settings(&error).mpi_cuda_aware == -1 && error.empty(), "LVX_MPI_CUDA_AWARE unset: -1");
  setenv("LVX_MPI_CUDA_AWARE", "1", 1);
  check(read_settings(&error).mpi_cuda_aware == 1 && error.empty(), "LVX_MPI_CUDA_AWARE=1");
  setenv("LVX_MPI_CUDA_AWARE", "0", 1);
  check(read_settings(&error).mpi_cuda_aware == 0 && error.empty(), "LVX_MPI_CUDA_AWARE=0");
  setenv("LVX_MPI_CUDA_AWARE", "yes", 1);
  check(read_settings(&error).mpi_cuda_aware == -1 && error == "LVX_MPI_CUDA_AWARE must be 0 or 1, got 'yes'",
        "LVX_MPI_CUDA_AWARE=yes: an error");
  unsetenv("LVX_MPI_CUDA_AWARE");
  check(mpi_device_support(1).access == MpiDeviceAccess::yes && mpi_device_support(0).access == MpiDeviceAccess::none,
        "the setting decides over the evidence");
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
  path_choice();
  mpi_cuda_aware_setting();
  one_rank_plan();
  front_door();
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
