// lvxattn._core: the pybind11 face of lvx::Context. Tensors cross as raw
// pointers (tensor.data_ptr()), so the extension does not link against torch;
// communicators cross as Fortran handles (mpi4py's comm.py2f()).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mpi.h>

#include <optional>

#include "backend.hpp"
#include "context.hpp"
#include "cost_model.hpp"
#include "cpu/attend_cpu.hpp"
#include "error.hpp"

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

// flops/s, bandwidth, latency and the optional calibrated step costs: 8 numbers,
// forward then backward, each (s_per_flop, s_per_kv_elem, s_per_q_elem, s_per_call).
lvx::CostParams make_cost_params(double flops_per_s, double bytes_per_s, double latency_s,
                                 const std::vector<double>& kernel) {
  LVX_REQUIRE(flops_per_s > 0 && bytes_per_s > 0 && latency_s >= 0,
              "cost parameters: flops_per_s and bytes_per_s must be > 0 and latency_s >= 0");
  LVX_REQUIRE(kernel.empty() || kernel.size() == 8,
              "cost parameters: kernel takes 8 numbers (forward, then backward: s_per_flop, s_per_kv_elem, "
              "s_per_q_elem, s_per_call), got " + std::to_string(kernel.size()));
  for (double v : kernel) LVX_REQUIRE(v >= 0, "cost parameters: kernel terms must be >= 0");
  lvx::CostParams c{flops_per_s, bytes_per_s, latency_s, {}, {}};
  if (!kernel.empty()) {
    c.fwd = {kernel[0], kernel[1], kernel[2], kernel[3]};
    c.bwd = {kernel[4], kernel[5], kernel[6], kernel[7]};
  }
  return c;
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

lvx::Algorithm parse_algorithm(const std::string& a) {
  if (a == "lvx") return lvx::Algorithm::lvx;
  if (a == "ring") return lvx::Algorithm::ring;
  if (a == "ulysses") return lvx::Algorithm::ulysses;
  if (a == "auto") return lvx::Algorithm::automatic;
  LVX_FAIL(lvx::Status::invalid_argument,
           "algorithm must be one of 'lvx', 'ring', 'ulysses', 'auto', got '" + a + "'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lvxattn core: distributed exact cross-attention (C++/CUDA)";

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

  m.def("cuda_built", &lvx::cuda_backend_built, "whether this build has the CUDA backend");
  m.def("cuda_head_dim_supported", &lvx::cuda_head_dim_supported, py::arg("D"));
  m.def("nccl_built", &lvx::nccl_transport_built, "whether this build has the NCCL transport");
  m.def("dtype_size", [](int t) { return lvx::dtype_size(static_cast<lvx::DType>(t)); });
  m.def("cpu_isas_available", &lvx::cpu::cpu_isas_available,
        "CPU kernel variants built and supported by this CPU, best first");
  m.def("cpu_isa", &lvx::cpu::cpu_isa, "the CPU kernel variant that runs");
  m.def("set_cpu_isa", &lvx::cpu::set_cpu_isa, py::arg("name"),
        "switch the CPU kernel variant; False when not built or not supported");
  m.def("cpu_kernels_describe", &lvx::cpu::cpu_kernels_describe, "CPU kernel variant and BLAS, in words");

  m.def(
      "predict",
      [](const std::vector<int64_t>& lq, const std::vector<int64_t>& lkv, int rank, int64_t B, int64_t Hq,
         int64_t Hkv, int64_t D, int dtype, bool has_ranges, const std::string& algorithm, double flops_per_s,
         double bytes_per_s, double latency_s, const std::vector<double>& kernel, bool lvx_gather,
         bool lvx_overlap) {
        LVX_REQUIRE(lq.size() == lkv.size() && !lq.empty(), "lq and lkv need one entry per rank");
        lvx::Plan p;
        p.P = static_cast<int>(lq.size());
        p.rank = rank;
        p.B = B;
        p.Hq = Hq;
        p.Hkv = Hkv;
        p.D = D;
        p.dtype = static_cast<lvx::DType>(dtype);
        p.has_ranges = has_ranges;
        p.lq = lq;
        p.lkv = lkv;
        lvx::finish_plan(p);
        p.lvx_gather = lvx_gather && p.P > 1;
        p.lvx_overlap = lvx_overlap && p.lvx_gather;
        return prediction_dict(lvx::predict(parse_algorithm(algorithm), p,
                                            make_cost_params(flops_per_s, bytes_per_s, latency_s, kernel)));
      },
      py::arg("lq"), py::arg("lkv"), py::arg("rank"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("D"),
      py::arg("dtype"), py::arg("has_ranges"), py::arg("algorithm"), py::arg("flops_per_s"), py::arg("bytes_per_s"),
      py::arg("latency_s"), py::arg("kernel") = std::vector<double>{}, py::arg("lvx_gather") = false,
      py::arg("lvx_overlap") = false,
      "Predicted seconds and bytes this rank sends for one algorithm (the model behind 'auto').");

  py::class_<lvx::Plan>(m, "Plan")
      .def_readonly("P", &lvx::Plan::P)
      .def_readonly("rank", &lvx::Plan::rank)
      .def_readonly("B", &lvx::Plan::B)
      .def_readonly("Hq", &lvx::Plan::Hq)
      .def_readonly("Hkv", &lvx::Plan::Hkv)
      .def_readonly("D", &lvx::Plan::D)
      .def_readonly("scale", &lvx::Plan::scale)
      .def_readonly("has_ranges", &lvx::Plan::has_ranges)
      .def_readonly("lq", &lvx::Plan::lq)
      .def_readonly("lkv", &lvx::Plan::lkv)
      .def_readonly("q_off", &lvx::Plan::q_off)
      .def_readonly("kv_off", &lvx::Plan::kv_off)
      .def_readonly("lq_total", &lvx::Plan::lq_total)
      .def_readonly("lkv_total", &lvx::Plan::lkv_total)
      .def_property_readonly("dtype", [](const lvx::Plan& p) { return static_cast<int>(p.dtype); })
      .def_property_readonly("algorithm", [](const lvx::Plan& p) { return std::string(lvx::algorithm_name(p.algorithm)); });

  py::class_<lvx::Context>(m, "Context")
      .def(py::init([](std::optional<int> comm_f, const std::string& device, int device_index, int threads,
                       const std::string& transport) {
             MPI_Comm comm = MPI_COMM_NULL;
             if (comm_f) comm = MPI_Comm_f2c(static_cast<MPI_Fint>(*comm_f));
             lvx::ContextOptions o;
             if (device == "cuda")
               o.device = lvx::DeviceKind::cuda;
             else if (device != "cpu")
               LVX_FAIL(lvx::Status::invalid_argument, "device must be 'cpu' or 'cuda', got '" + device + "'");
             o.device_index = device_index;
             o.threads = threads;
             o.transport = transport;
             return std::make_unique<lvx::Context>(comm, o);
           }),
           py::arg("comm_f") = py::none(), py::arg("device") = "cpu", py::arg("device_index") = -1,
           py::arg("threads") = 0, py::arg("transport") = "auto")
      .def_property_readonly("rank", &lvx::Context::rank)
      .def_property_readonly("size", &lvx::Context::size)
      .def_property_readonly("transport", &lvx::Context::transport_name)
      .def_property_readonly("backend", [](lvx::Context& c) { return c.backend().describe(); })
      .def("release_buffers", &lvx::Context::release_buffers, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("buffer_bytes", &lvx::Context::buffer_bytes)
      .def("set_stream", [](lvx::Context& c, uintptr_t s) { c.backend().set_stream(ptr<void>(s)); })
      .def(
          "set_cost_params",
          [](lvx::Context& c, double flops, double bw, double lat, const std::vector<double>& kernel) {
            c.cost_params = make_cost_params(flops, bw, lat, kernel);
          },
          py::arg("flops_per_s"), py::arg("bytes_per_s"), py::arg("latency_s"), py::arg("kernel") = std::vector<double>{})
      .def(
          "plan",
          [](lvx::Context& c, int64_t B, int64_t Lq, int64_t Lkv, int64_t Hq, int64_t Hkv, int64_t D, int dtype,
             const std::string& algorithm, float scale, bool has_ranges, int64_t max_range_end,
             const std::string& local_error, int device) {
            lvx::LocalProblem l;
            std::string err = local_error;
            l.B = B;
            l.Lq = Lq;
            l.Lkv = Lkv;
            l.Hq = Hq;
            l.Hkv = Hkv;
            l.D = D;
            l.dtype = static_cast<lvx::DType>(dtype);
            try {
              l.algorithm = parse_algorithm(algorithm);
            } catch (const lvx::Error& e) {
              if (err.empty()) err = e.what();
            }
            l.scale = scale;
            l.has_ranges = has_ranges;
            l.max_range_end = max_range_end;
            l.device = device;
            py::gil_scoped_release release;
            return c.make_plan(l, err);
          },
          py::arg("B"), py::arg("Lq"), py::arg("Lkv"), py::arg("Hq"), py::arg("Hkv"), py::arg("D"), py::arg("dtype"),
          py::arg("algorithm"), py::arg("scale"), py::arg("has_ranges"), py::arg("max_range_end"),
          py::arg("local_error") = "", py::arg("device") = 0)
      .def("forward",
           [](lvx::Context& c, const lvx::Plan& plan, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t ranges,
              uintptr_t o, uintptr_t lse) {
             py::gil_scoped_release release;
             c.forward(plan, lvx::ForwardIO{ptr<void>(q), ptr<void>(k), ptr<void>(v), ptr<int32_t>(ranges),
                                            ptr<void>(o), ptr<float>(lse)});
           })
      .def("backward",
           [](lvx::Context& c, const lvx::Plan& plan, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t ranges,
              uintptr_t o, uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk, uintptr_t dv) {
             py::gil_scoped_release release;
             c.backward(plan, lvx::BackwardIO{ptr<void>(q), ptr<void>(k), ptr<void>(v), ptr<int32_t>(ranges),
                                              ptr<void>(o), ptr<float>(lse), ptr<void>(dout), ptr<void>(dq),
                                              ptr<void>(dk), ptr<void>(dv)});
           })
      .def("stats",
           [](lvx::Context& c) {
             py::dict d;
             d["algorithm"] = std::string(lvx::algorithm_name(c.last_plan().algorithm));
             d["transport"] = c.transport_name();
             d["backend"] = c.backend().describe();
             d["P"] = c.size();
             d["lvx_gather"] = c.last_plan().lvx_gather;
             d["lvx_form"] = c.last_plan().algorithm != lvx::Algorithm::lvx || c.size() == 1 ? ""
                             : !c.last_plan().lvx_gather                                    ? "ring"
                             : c.last_plan().lvx_overlap                                    ? "overlap"
                                                                                            : "single";
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
      })
      .def(
          "predict",
          [](lvx::Context& c, const lvx::Plan& plan, const std::string& algorithm) {
            return prediction_dict(lvx::predict(parse_algorithm(algorithm), plan, c.cost_params));
          },
          py::arg("plan"), py::arg("algorithm"));
}
