// lvxattn._core: the pybind11 face of the front door (lvx::Context, lvx::Planner) and of
// the cost model (lvx::Plan.predict). Tensors cross as raw pointers (tensor.data_ptr()),
// so the extension does not link against torch; communicators cross as Fortran handles
// (mpi4py's comm.py2f()); the library's enumerations cross as enums bound once, with
// their values from lvx.h (core/types.cpp checks them at compile time).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mpi.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "context/context.hpp"
#include "core/error.hpp"
#include "cpu/attend_cpu.hpp"
#include "gpu/gpu.hpp"
#include "gpu/transports.hpp"
#include "lvx/lvx.h"
#include "plan/cost_model.hpp"
#include "plan/planner.hpp"
#include "plan/settings.hpp"
#include "transport/mpi_device_support.hpp"
#include "plan/validate.hpp"

namespace py = pybind11;

namespace {

PyObject* g_base_error = nullptr;
PyObject* g_invalid_error = nullptr;
PyObject* g_mismatch_error = nullptr;
PyObject* g_unsupported_error = nullptr;

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Values 0, 1, ... of an enumeration under their library names ("float32", "lvx",
// "mpi-staged", ...), constructible from a name (DType("bfloat16")), and a name is taken
// where a value is expected.
template <typename E>
void bind_enum(py::module_& m, const char* py_name, const char* doc, E (*parse)(const std::string&)) {
  py::enum_<E> e(m, py_name, doc);
  for (int i = 0; lvx::is_valid(static_cast<E>(i)); ++i) e.value(lvx::name(static_cast<E>(i)), static_cast<E>(i));
  e.def(py::init([parse](const std::string& s) { return parse(s); }), py::arg("name"));
  e.def_property_readonly("label", [](E v) { return std::string(lvx::name(v)); }, "the library's name of the value");
  py::implicitly_convertible<py::str, E>();  // a name where a value is expected: predict("ring", ...)
}

py::dict phase_dict(const lvx::PhaseStats& s) {
  py::dict d;
  d["bytes_sent"] = s.bytes_sent;
  d["bytes_recv"] = s.bytes_recv;
  d["compute_s"] = s.compute_s;
  d["blocked_s"] = s.blocked_s;
  d["total_s"] = s.total_s;
  d["steps"] = s.steps;
  return d;
}

py::dict prediction_dict(const lvx::Prediction& r) {
  py::dict d;
  d["forward_s"] = r.forward_s;
  d["backward_s"] = r.backward_s;
  d["forward_bytes"] = r.forward_bytes;
  d["backward_bytes"] = r.backward_bytes;
  d["feasible"] = r.feasible;
  return d;
}

// lvx's form as the stats name it: "" where lvx's form does not apply.
std::string lvx_form_label(const lvx::Plan& p) {
  return p.algorithm != lvx::Algorithm::lvx || p.P == 1 ? "" : lvx::name(p.lvx_form);
}

void bind_errors(py::module_& m) {
  g_base_error = PyErr_NewException("lvxattn._core.LvxError", PyExc_RuntimeError, nullptr);
  py::tuple invalid_bases = py::make_tuple(py::handle(g_base_error), py::handle(PyExc_ValueError));
  g_invalid_error = PyErr_NewException("lvxattn._core.InvalidArgumentError", invalid_bases.ptr(), nullptr);
  g_mismatch_error = PyErr_NewException("lvxattn._core.RankMismatchError", invalid_bases.ptr(), nullptr);
  py::tuple unsup_bases = py::make_tuple(py::handle(g_base_error), py::handle(PyExc_NotImplementedError));
  g_unsupported_error = PyErr_NewException("lvxattn._core.UnsupportedError", unsup_bases.ptr(), nullptr);
  m.attr("LvxError") = py::handle(g_base_error);
  m.attr("InvalidArgumentError") = py::handle(g_invalid_error);
  m.attr("RankMismatchError") = py::handle(g_mismatch_error);
  m.attr("UnsupportedError") = py::handle(g_unsupported_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lvx::Error& e) {
      PyObject* type = g_base_error;
      switch (e.status()) {
        case lvx::Status::invalid_argument: type = g_invalid_error; break;
        case lvx::Status::mismatch: type = g_mismatch_error; break;
        case lvx::Status::unsupported: type = g_unsupported_error; break;
        case lvx::Status::out_of_memory: type = PyExc_MemoryError; break;
        default: break;
      }
      PyErr_SetString(type, e.what());
    }
  });
}

void bind_plan(py::module_& m) {
  py::class_<lvx::CostParams>(m, "CostParams",
                              "The rates algorithm='auto' and transport='auto' predict with (cost_model.hpp).")
      .def(py::init([](double flops_per_s, double bytes_per_s, double latency_s, const std::vector<double>& kernel,
                       const std::map<std::string, std::pair<double, double>>& links) {
             lvx::CostParams c = lvx::make_cost_params(flops_per_s, bytes_per_s, latency_s, kernel);
             for (const auto& [name, link] : links) lvx::set_link(c, lvx::parse_transport(name), link.first, link.second);
             return c;
           }),
           py::arg("flops_per_s"), py::arg("bytes_per_s"), py::arg("latency_s"),
           py::arg("kernel") = std::vector<double>{}, py::arg("links") = std::map<std::string, std::pair<double, double>>{},
           "kernel: the calibrated step costs, 8 numbers (forward, then backward: s_per_flop, s_per_kv_elem, "
           "s_per_q_elem, s_per_call), or none: a step then costs its flops at flops_per_s. links: the calibrated "
           "(bytes_per_s, latency_s) of device transports by name ('nccl', 'mpi-direct', 'mpi-staged'); where every "
           "transport a call may use has one, transport='auto' takes the fastest predicted")
      .def_readonly("flops_per_s", &lvx::CostParams::flops_per_s)
      .def_readonly("bytes_per_s", &lvx::CostParams::bytes_per_s)
      .def_readonly("latency_s", &lvx::CostParams::latency_s)
      .def_property_readonly(
          "links",
          [](const lvx::CostParams& c) {
            py::dict d;
            for (lvx::TransportKind t : {lvx::TransportKind::nccl, lvx::TransportKind::mpi_direct, lvx::TransportKind::mpi_staged})
              if (const lvx::LinkCost* l = lvx::link_of(c, t); l && l->bytes_per_s > 0)
                d[lvx::name(t)] = py::make_tuple(l->bytes_per_s, l->latency_s);
            return d;
          },
          "the calibrated links, {name: (bytes_per_s, latency_s)}");

  py::class_<lvx::Problem>(m, "Problem", "One rank's call: its shapes (rows of its shard), dtype, algorithm, scale.")
      .def(py::init([](int64_t B, int64_t Lq, int64_t Lkv, int64_t Hq, int64_t Hkv, int64_t D, lvx::DType dtype,
                       lvx::Algorithm algorithm, float scale, uintptr_t q_ranges) {
             return lvx::Problem{B, Lq, Lkv, Hq, Hkv, D, dtype, algorithm, scale, ptr<const int32_t>(q_ranges)};
           }),
           py::kw_only(), py::arg("B"), py::arg("Lq"), py::arg("Lkv"), py::arg("Hq"), py::arg("Hkv"), py::arg("D"),
           py::arg("dtype"), py::arg("algorithm"), py::arg("scale") = std::numeric_limits<float>::quiet_NaN(),
           py::arg("q_ranges") = 0,
           "scale NaN: 1/sqrt(D); q_ranges: the address of int32 [B, Lq, 2] on the context's device, 0 for none");

  py::class_<lvx::Plan>(m, "Plan",
                        "What every rank agreed on for a call and what the planner chose (Context.plan), or a "
                        "plan to price (the constructor, for Plan.predict).")
      .def(py::init([](const std::vector<int64_t>& lq, const std::vector<int64_t>& lkv, int rank, int64_t B, int64_t Hq,
                       int64_t Hkv, int64_t D, lvx::DType dtype, bool has_ranges, lvx::LvxForm lvx_form) {
             LVX_REQUIRE(lq.size() == lkv.size() && !lq.empty(), "lq and lkv need one entry per rank");
             LVX_REQUIRE(rank >= 0 && rank < static_cast<int>(lq.size()), "rank must be in [0, len(lq))");
             lvx::Plan p;
             p.rank = rank;
             p.B = B;
             p.Hq = Hq;
             p.Hkv = Hkv;
             p.D = D;
             p.dtype = dtype;
             p.has_ranges = has_ranges;
             p.set_rows(lq, lkv);
             p.lvx_form = p.P > 1 ? lvx_form : lvx::LvxForm::ring;
             return p;
           }),
           py::arg("lq"), py::arg("lkv"), py::kw_only(), py::arg("rank") = 0, py::arg("B") = 1, py::arg("Hq") = 1,
           py::arg("Hkv") = 1, py::arg("D") = 64, py::arg("dtype") = lvx::DType::f32, py::arg("has_ranges") = false,
           py::arg("lvx_form") = lvx::LvxForm::ring,
           "lq, lkv: every rank's query and KV rows; the plan is rank `rank`'s")
      .def("predict",
           [](const lvx::Plan& p, lvx::Algorithm algorithm, const lvx::CostParams& cost) {
             return prediction_dict(lvx::predict(algorithm, p, cost));
           },
           py::arg("algorithm"), py::arg("cost"),
           "Predicted seconds (forward_s, backward_s) and bytes this rank sends (forward_bytes, backward_bytes) of "
           "one algorithm for this plan, and whether it can run (feasible): the model behind 'auto'.")
      .def_readonly("P", &lvx::Plan::P)
      .def_readonly("rank", &lvx::Plan::rank)
      .def_readonly("B", &lvx::Plan::B)
      .def_readonly("Hq", &lvx::Plan::Hq)
      .def_readonly("Hkv", &lvx::Plan::Hkv)
      .def_readonly("D", &lvx::Plan::D)
      .def_readonly("dtype", &lvx::Plan::dtype)
      .def_readonly("algorithm", &lvx::Plan::algorithm)
      .def_readonly("transport", &lvx::Plan::transport)
      .def_readonly("lvx_form", &lvx::Plan::lvx_form)
      .def_readonly("scale", &lvx::Plan::scale)
      .def_readonly("has_ranges", &lvx::Plan::has_ranges)
      .def_readonly("lq", &lvx::Plan::lq)
      .def_readonly("lkv", &lvx::Plan::lkv)
      .def_readonly("q_off", &lvx::Plan::q_off)
      .def_readonly("kv_off", &lvx::Plan::kv_off)
      .def_readonly("lq_total", &lvx::Plan::lq_total)
      .def_readonly("lkv_total", &lvx::Plan::lkv_total);

  py::class_<lvx::Planner, std::shared_ptr<lvx::Planner>>(m, "Planner",
                                                         "The planner of one communicator (collective to make).")
      .def(py::init([](std::optional<int> comm_f) {
             return std::make_shared<lvx::Planner>(comm_f ? MPI_Comm_f2c(static_cast<MPI_Fint>(*comm_f))
                                                          : MPI_COMM_NULL);
           }),
           py::arg("comm_f") = py::none())
      .def_property_readonly("rank", &lvx::Planner::rank)
      .def_property_readonly("size", &lvx::Planner::size)
      .def_property_readonly("mpi_probe", &lvx::Planner::mpi_probe,
                             "the probe of CUDA-aware MPI on this communicator: '' (not run), 'passed' or 'failed: ...'")
      .def(
          "plan_for",
          [](lvx::Planner& planner, int64_t B, int64_t Lq, int64_t Lkv, int64_t Hq, int64_t Hkv, int64_t D,
             lvx::DType dtype, lvx::Algorithm algorithm, lvx::DeviceKind device, lvx::TransportKind transport,
             int cuda_device, std::optional<lvx::CostParams> cost) {
            lvx::LocalProblem l;
            l.B = B;
            l.Lq = Lq;
            l.Lkv = Lkv;
            l.Hq = Hq;
            l.Hkv = Hkv;
            l.D = D;
            l.dtype = dtype;
            l.algorithm = algorithm;
            l.scale = D > 0 ? 1.f / std::sqrt(static_cast<float>(D)) : 1.f;
            l.device = device;
            l.cuda_device = cuda_device;
            l.transport = transport;
            if (cost) l.cost = *cost;
            py::gil_scoped_release release;
            return planner.plan(l);
          },
          py::kw_only(), py::arg("B"), py::arg("Lq"), py::arg("Lkv"), py::arg("Hq"), py::arg("Hkv"), py::arg("D"),
          py::arg("dtype") = lvx::DType::f32, py::arg("algorithm") = lvx::Algorithm::lvx,
          py::arg("device") = lvx::DeviceKind::cpu, py::arg("transport") = lvx::TransportKind::automatic,
          py::arg("cuda_device") = -1, py::arg("cost") = py::none(),
          "Collective: the plan of a call described by its sizes (this rank's rows), without tensors and without "
          "running it: what a context's plan() decides after its checks (transport, lvx's form, algorithm), with "
          "this rank's real capabilities (NCCL built, its MPI's answer on CUDA buffers, LVX_* settings). Raises "
          "as a call would, on every rank.")
      .def(
          "fail",
          [](lvx::Planner& p, const std::string& message) {
            py::gil_scoped_release release;
            p.fail(message);
          },
          py::arg("message"),
          "Joins the call's plan with this rank's error, so that every rank fails with it; always raises "
          "InvalidArgumentError.");
}

void bind_context(py::module_& m) {
  py::class_<lvx::Context>(m, "Context", "A device context on a planner: the front door (plan) and its execution.")
      .def(py::init([](std::shared_ptr<lvx::Planner> planner, lvx::DeviceKind device, int device_index, int threads,
                       lvx::TransportKind transport) {
             return std::make_unique<lvx::Context>(std::move(planner),
                                                   lvx::ContextOptions{device, device_index, threads, transport});
           }),
           py::arg("planner"), py::arg("device") = lvx::DeviceKind::cpu, py::arg("device_index") = -1,
           py::arg("threads") = 0, py::arg("transport") = lvx::TransportKind::automatic)
      .def_property_readonly("rank", &lvx::Context::rank)
      .def_property_readonly("size", &lvx::Context::size)
      .def_property_readonly("backend", [](lvx::Context& c) { return c.backend().describe(); })
      .def("release_buffers", &lvx::Context::release_buffers, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("buffer_bytes", &lvx::Context::buffer_bytes)
      .def("set_stream", [](lvx::Context& c, uintptr_t s) { c.backend().set_stream(ptr<void>(s)); })
      .def("set_cost_params", [](lvx::Context& c, const lvx::CostParams& cost) { c.cost_params = cost; },
           py::arg("cost"))
      .def_readonly("cost_params", &lvx::Context::cost_params)
      .def(
          "plan",
          [](lvx::Context& c, const lvx::Problem& problem) {
            py::gil_scoped_release release;
            return c.plan(problem);
          },
          py::arg("problem"), "Collective: checks this rank's call and plans it with every rank.")
      .def("forward",
           [](lvx::Context& c, const lvx::Plan& plan, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t ranges,
              uintptr_t o, uintptr_t lse) {
             py::gil_scoped_release release;
             c.forward(plan, lvx::ForwardIO{ptr<void>(q), ptr<void>(k), ptr<void>(v), ptr<int32_t>(ranges),
                                            ptr<void>(o), ptr<float>(lse)});
           })
      .def(
          "backward",
          [](lvx::Context& c, const lvx::Plan& plan, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t ranges,
             uintptr_t o, uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk, uintptr_t dv,
             std::optional<lvx::Problem> shape) {
            py::gil_scoped_release release;
            c.backward(plan,
                       lvx::BackwardIO{ptr<void>(q), ptr<void>(k), ptr<void>(v), ptr<int32_t>(ranges), ptr<void>(o),
                                       ptr<float>(lse), ptr<void>(dout), ptr<void>(dq), ptr<void>(dk), ptr<void>(dv)},
                       shape ? &*shape : nullptr);
          },
          py::arg("plan"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("q_ranges"), py::arg("o"), py::arg("lse"),
          py::arg("dout"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("shape") = py::none(),
          "shape: this rank's problem, when the plan is reused from its forward (checked against the plan)")
      .def(
          "stats",
          [](lvx::Context& c) {
            const lvx::Plan& plan = c.last_plan();
            py::dict d;
            d["algorithm"] = std::string(lvx::name(plan.algorithm));
            d["transport"] = c.transport_name();
            d["path"] = std::string(lvx::name(plan.transport));  // none, mpi, mpi-staged, mpi-direct or nccl
            d["backend"] = c.backend().describe();
            d["P"] = c.size();
            d["lvx_gather"] = plan.algorithm == lvx::Algorithm::lvx && plan.lvx_gathered();
            d["lvx_form"] = lvx_form_label(plan);
            lvx::PhaseStats fwd, bwd;
            {
              py::gil_scoped_release release;  // reading the timings waits for the device
              fwd = c.forward_stats();
              bwd = c.backward_stats();
            }
            d["forward"] = phase_dict(fwd);
            d["backward"] = phase_dict(bwd);
            return d;
          },
          "the last call of each phase; waits for its device work")
      .def(
          "total_stats",
          [](lvx::Context& c) {
            py::dict d;
            for (int phase = 0; phase < 2; ++phase) {
              lvx::PhaseLog::Totals t;
              {
                py::gil_scoped_release release;
                t = c.phase_log(phase).totals(c.backend());
              }
              if (!t.calls) continue;
              py::dict p = phase_dict(t.sum);
              p["calls"] = t.calls;
              d[phase == 0 ? "forward" : "backward"] = p;
            }
            return d;
          },
          "per phase sums over the calls since the last reset_total_stats")
      .def("reset_total_stats", [](lvx::Context& c) {
        py::gil_scoped_release release;
        for (int phase = 0; phase < 2; ++phase) c.phase_log(phase).reset_totals(c.backend());
      });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lvxattn core: distributed exact cross-attention (C++/CUDA)";
  bind_errors(m);
  bind_enum<lvx::DType>(m, "DType", "storage dtype (lvx_dtype_t)", lvx::parse_dtype);
  bind_enum<lvx::Algorithm>(m, "Algorithm", "attention algorithm (lvx_algorithm_t)", lvx::parse_algorithm);
  bind_enum<lvx::DeviceKind>(m, "Device", "where the buffers live (lvx_device_t)", lvx::parse_device);
  bind_enum<lvx::TransportKind>(m, "Transport", "what moves the data between ranks (lvx_transport_t)",
                                lvx::parse_transport);
  bind_enum<lvx::LvxForm>(m, "LvxForm", "how lvx moves the query side (plan.hpp)", lvx::parse_lvx_form);
  m.def(
      "version",
      [] {
        const int v = lvx_version();
        return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
      },
      "the library's version (lvx_version())");
  m.def("cuda_built", &lvx::gpu::built, "whether this build has the CUDA backend");
  m.def("nccl_built", &lvx::gpu::nccl_built, "whether this build has the NCCL transport");
  m.def(
      "mpi_device_support",
      [] {
        std::string error;
        const lvx::Settings settings = lvx::read_settings(&error);
        if (!error.empty()) LVX_FAIL(lvx::Status::invalid_argument, error);
        const lvx::MpiDeviceSupport s = lvx::mpi_device_support(settings.mpi_cuda_aware);
        py::dict d;
        d["access"] = std::string(lvx::name(s.access));
        d["how"] = s.how;
        return d;
      },
      "This rank's MPI and CUDA buffers: access 'none', 'evidence' (the MPI says so; a collective probe confirms "
      "it before first use) or 'yes' (LVX_MPI_CUDA_AWARE=1), and how that was found. MPI must be initialized.");
  m.def(
      "choose_path",
      [](const lvx::Plan& shape, lvx::TransportKind transport, lvx::DeviceKind device, const std::vector<py::dict>& caps,
         lvx::Algorithm algorithm, const lvx::CostParams& cost) {
        std::vector<lvx::TransportCaps> c;
        for (const py::dict& d : caps) {
          lvx::TransportCaps t;
          t.nccl = d.contains("nccl") && d["nccl"].cast<bool>();
          const std::string access = d.contains("mpi_device") ? d["mpi_device"].cast<std::string>() : "none";
          LVX_REQUIRE(access == "none" || access == "evidence" || access == "yes",
                      "mpi_device must be 'none', 'evidence' or 'yes', got '" + access + "'");
          t.mpi_device = access == "yes"        ? lvx::MpiDeviceAccess::yes
                         : access == "evidence" ? lvx::MpiDeviceAccess::evidence
                                                : lvx::MpiDeviceAccess::none;
          t.gpu = d.contains("gpu") ? d["gpu"].cast<uint64_t>() : 0;
          t.how = d.contains("how") ? d["how"].cast<std::string>() : "";
          c.push_back(t);
        }
        LVX_REQUIRE(static_cast<int>(c.size()) == shape.P, "caps needs one entry per rank of the plan");
        std::string error;
        const lvx::Settings settings = lvx::read_settings(&error);
        if (!error.empty()) LVX_FAIL(lvx::Status::invalid_argument, error);
        const lvx::PathChoice p = lvx::choose_path(shape, transport, device, c, settings, algorithm, cost);
        return py::make_tuple(p.transport, p.lvx_form, p.algorithm);
      },
      py::arg("plan"), py::arg("transport"), py::arg("device"), py::arg("caps"), py::arg("algorithm"), py::arg("cost"),
      "The planner's choice (transport, lvx_form, algorithm) for a plan's shape given every rank's capabilities "
      "(dicts: nccl: bool, mpi_device: 'none'|'evidence'|'yes', gpu: int, how: str), as plan() makes it after the "
      "probe; local, for tools and tests. Raises as a plan would.");
  m.attr("MAX_HEAD_DIM") = lvx::kMaxHeadDim;
  m.def("cpu_isas_available", &lvx::cpu::cpu_isas_available,
        "CPU kernel variants built and supported by this CPU, best first");
  m.def("cpu_isa", &lvx::cpu::cpu_isa, "the CPU kernel variant that runs");
  m.def("set_cpu_isa", &lvx::cpu::set_cpu_isa, py::arg("name"),
        "switch the CPU kernel variant; False when not built or not supported");
  m.def("cpu_kernels_describe", &lvx::cpu::cpu_kernels_describe, "CPU kernel variant and BLAS, in words");
  bind_plan(m);
  bind_context(m);
}
