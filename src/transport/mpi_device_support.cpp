#include "transport/mpi_device_support.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "gpu/transports.hpp"

namespace lvx {

const char* name(MpiDeviceAccess a) {
  switch (a) {
    case MpiDeviceAccess::none: return "none";
    case MpiDeviceAccess::evidence: return "evidence";
    case MpiDeviceAccess::yes: return "yes";
  }
  return "unknown";
}

namespace {

// The libmpi whose MPI_Init this library calls, opened again (it is loaded already):
// symbols are looked up there, since Python loads extensions and mpi4py loads libmpi
// with RTLD_LOCAL, out of reach of RTLD_DEFAULT.
void* mpi_library() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init), &info) && info.dli_fname)
    if (void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD)) return h;
  return dlopen(nullptr, RTLD_NOW);
}

std::string library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  if (MPI_Get_library_version(text, &len) != MPI_SUCCESS) return "an unknown MPI";
  std::string s(text, std::min<int>(len, MPI_MAX_LIBRARY_VERSION_STRING));
  s = s.substr(0, s.find_first_of("\n,"));
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

// A string control variable through MPI_T ("" when absent or unreadable).
std::string mpi_t_string(const char* name) {
  int provided = 0;
  if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS) return "";
  std::string value;
  int index = -1;
  if (MPI_T_cvar_get_index(name, &index) == MPI_SUCCESS && index >= 0) {
    char var[256], desc[1024];
    int var_len = sizeof var, desc_len = sizeof desc, verbosity = 0, bind = 0, scope = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_T_enum enumtype = MPI_T_ENUM_NULL;
    MPI_T_cvar_handle handle = MPI_T_CVAR_HANDLE_NULL;
    int count = 0;
    if (MPI_T_cvar_get_info(index, var, &var_len, &verbosity, &type, &enumtype, desc, &desc_len, &bind, &scope) ==
            MPI_SUCCESS &&
        type == MPI_CHAR && MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) == MPI_SUCCESS) {
      std::vector<char> buf(static_cast<size_t>(std::max(count, 0)) + 1, '\0');
      if (count > 0 && MPI_T_cvar_read(handle, buf.data()) == MPI_SUCCESS) value = buf.data();
      MPI_T_cvar_handle_free(&handle);
    }
  }
  MPI_T_finalize();
  return value;
}

// Open MPI's selected pml. Its component record (mca_pml_base_selected_component, an
// exported global) begins with the MCA header: three ints, the project name (16 bytes),
// three ints, the type name (32), three ints, the component name (64). The record is
// read only when its project and type read "ompi" and "pml" there; else the MPI_T
// control variable "pml" (what the user forced; empty when Open MPI chose).
std::string open_mpi_pml(void* libmpi) {
  const char* rec = libmpi ? static_cast<const char*>(dlsym(libmpi, "mca_pml_base_selected_component")) : nullptr;
  if (rec && std::strncmp(rec + 12, "ompi", 5) == 0 && std::strncmp(rec + 40, "pml", 4) == 0) {
    const char* component = rec + 84;
    if (strnlen(component, 64) < 64 && *component) return component;
  }
  return mpi_t_string("pml");
}

// UCX's own answer, from the libucp already loaded in this process (the one Open MPI's
// pml uses): a context made with the user's UCX_* settings, asked for its memory types.
// The declarations are UCX's stable ABI (ucp.h): only masked fields are read or written.
struct UcpParams {
  uint64_t field_mask, features;
  unsigned char tail[1024];
};
struct UcpContextAttr {
  uint64_t field_mask;
  size_t request_size;
  int thread_mode;
  uint64_t memory_types;
  unsigned char tail[1024];
};
constexpr uint64_t kUcpParamFeatures = 1u << 0, kUcpFeatureTag = 1u << 0, kUcpAttrMemoryTypes = 1u << 2;
constexpr uint64_t kUcsMemoryTypeCuda = 1u << 1;

std::string ucx_cuda_memory(bool* cuda) {
  *cuda = false;
  void* ucp = dlopen("libucp.so.0", RTLD_NOW | RTLD_NOLOAD);
  if (!ucp) return "no libucp loaded";
  using GetVersion = void (*)(unsigned*, unsigned*, unsigned*);
  using ConfigRead = int (*)(const char*, const char*, void**);
  using ConfigRelease = void (*)(void*);
  using Init = int (*)(unsigned, unsigned, const UcpParams*, const void*, void**);
  using Query = int (*)(void*, UcpContextAttr*);
  using Cleanup = void (*)(void*);
  auto get_version = reinterpret_cast<GetVersion>(dlsym(ucp, "ucp_get_version"));
  auto config_read = reinterpret_cast<ConfigRead>(dlsym(ucp, "ucp_config_read"));
  auto config_release = reinterpret_cast<ConfigRelease>(dlsym(ucp, "ucp_config_release"));
  auto init = reinterpret_cast<Init>(dlsym(ucp, "ucp_init_version"));
  auto query = reinterpret_cast<Query>(dlsym(ucp, "ucp_context_query"));
  auto cleanup = reinterpret_cast<Cleanup>(dlsym(ucp, "ucp_cleanup"));
  std::string out;
  if (!get_version || !config_read || !config_release || !init || !query || !cleanup) {
    out = "libucp without the expected entry points";
  } else {
    unsigned major = 0, minor = 0, release = 0;
    get_version(&major, &minor, &release);
    const std::string version = "UCX " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
    void* config = nullptr;
    void* context = nullptr;
    UcpParams params{};
    params.field_mask = kUcpParamFeatures;
    params.features = kUcpFeatureTag;
    UcpContextAttr attr{};
    attr.field_mask = kUcpAttrMemoryTypes;
    if (config_read(nullptr, nullptr, &config) != 0) {
      out = version + ": its configuration could not be read";
    } else {
      if (init(major, minor, &params, config, &context) != 0) {
        out = version + ": a context could not be made";
      } else {
        if (query(context, &attr) != 0) {
          out = version + ": the context could not be queried";
        } else {
          *cuda = (attr.memory_types & kUcsMemoryTypeCuda) != 0;
          out = version + (*cuda ? " reports CUDA memory" : " reports no CUDA memory (no CUDA transports)");
        }
        cleanup(context);
      }
      config_release(config);
    }
  }
  dlclose(ucp);
  return out;
}

// The evidence, once per process.
MpiDeviceSupport gather_evidence() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return {MpiDeviceAccess::none, "MPI is not initialized"};
  const std::string lib = library_version();
  std::unique_ptr<void, int (*)(void*)> handle(mpi_library(), dlclose);
  void* libmpi = handle.get();
  std::string no;  // what was looked at, for the "none" answer
  auto sym = [&](const char* name) { return libmpi ? dlsym(libmpi, name) : nullptr; };

  if (auto query = reinterpret_cast<int (*)()>(sym("MPIX_Query_cuda_support"))) {
    const int q = query();
    if (q == 1) return {MpiDeviceAccess::evidence, lib + ": MPIX_Query_cuda_support() = 1"};
    no = "MPIX_Query_cuda_support() = " + std::to_string(q);
  }
  if (auto query = reinterpret_cast<int (*)(int, int*)>(sym("MPIX_GPU_query_support"))) {
    int supported = 0;
    if (query(0 /* MPIX_GPU_SUPPORT_CUDA */, &supported) == MPI_SUCCESS && supported)
      return {MpiDeviceAccess::evidence, lib + ": MPIX_GPU_query_support(CUDA) = 1"};
    no += std::string(no.empty() ? "" : ", ") + "MPIX_GPU_query_support(CUDA) = 0";
  }
  if (sym("ompi_mpi_comm_self")) {  // Open MPI
    const std::string pml = open_mpi_pml(libmpi);
    if (pml == "ucx") {
      bool cuda = false;
      const std::string ucx = ucx_cuda_memory(&cuda);
      if (cuda) return {MpiDeviceAccess::evidence, lib + ": pml ucx, " + ucx};
      no += std::string(no.empty() ? "" : ", ") + "pml ucx but " + ucx;
    } else {
      no += std::string(no.empty() ? "" : ", ") + "pml " + (pml.empty() ? "not known" : "'" + pml + "'") +
            " (not ucx)";
    }
  }
  if (contains(lib, "CRAY MPICH") || contains(lib, "Cray MPICH")) {
    if (env_is("MPICH_GPU_SUPPORT_ENABLED", "1")) return {MpiDeviceAccess::evidence, lib + ": MPICH_GPU_SUPPORT_ENABLED=1"};
    no += std::string(no.empty() ? "" : ", ") + "MPICH_GPU_SUPPORT_ENABLED is not 1";
  }
  if (contains(lib, "MVAPICH")) {
    if (env_is("MV2_USE_CUDA", "1")) return {MpiDeviceAccess::evidence, lib + ": MV2_USE_CUDA=1"};
    no += std::string(no.empty() ? "" : ", ") + "MV2_USE_CUDA is not 1";
  }
  if (env_is("MPIR_CVAR_ENABLE_GPU", "0")) no += std::string(no.empty() ? "" : ", ") + "MPIR_CVAR_ENABLE_GPU=0";
  return {MpiDeviceAccess::none, lib + ": " + (no.empty() ? "no sign of CUDA support" : no)};
}

}  // namespace

MpiDeviceSupport mpi_device_support(int forced) {
  if (forced == 1) return {MpiDeviceAccess::yes, "LVX_MPI_CUDA_AWARE=1 (trusted, not probed)"};
  if (forced == 0) return {MpiDeviceAccess::none, "LVX_MPI_CUDA_AWARE=0"};
  static std::once_flag once;
  static MpiDeviceSupport evidence;
  std::call_once(once, [] { evidence = gather_evidence(); });
  return evidence;
}

namespace {

// Every rank's complaint, joined the same way on every rank ("" when none has one).
std::string agree_on(MPI_Comm comm, int size, const std::string& local) {
  constexpr int kLen = 160;
  char mine[kLen] = {};
  std::snprintf(mine, sizeof mine, "%s", local.c_str());
  std::vector<char> all(static_cast<size_t>(size) * kLen);
  if (MPI_Allgather(mine, kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, comm) != MPI_SUCCESS)
    return "MPI_Allgather failed" + (local.empty() ? std::string() : " (" + local + ")");
  std::string joined;
  for (int r = 0; r < size; ++r) {
    const char* text = all.data() + static_cast<size_t>(r) * kLen;
    if (!*text) continue;
    joined += (joined.empty() ? "rank " : "; rank ") + std::to_string(r) + ": " + std::string(text, strnlen(text, kLen));
  }
  return joined;
}

}  // namespace

bool probe_mpi_device(MPI_Comm comm, int device, std::string* why) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const std::vector<size_t> sizes = {256, size_t(4) << 20};  // an eager and a rendezvous message
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  std::string local;
  std::unique_ptr<gpu::ProbeBuffers> bufs;
  try {
    bufs = gpu::make_probe_buffers(device, sizes, rank);
  } catch (const std::exception& e) {
    local = e.what();
  }
  // Every rank learns whether all could take part before any device pointer reaches MPI.
  std::string failed = agree_on(comm, size, local);
  if (why) *why = failed;
  if (!failed.empty()) return false;

  std::vector<MPI_Request> reqs;
  for (size_t i = 0; i < sizes.size() && local.empty(); ++i) {
    reqs.emplace_back(MPI_REQUEST_NULL);
    if (MPI_Irecv(bufs->recv(i), static_cast<int>(sizes[i]), MPI_BYTE, prev, 0, comm, &reqs.back()) != MPI_SUCCESS)
      local = "MPI_Irecv into a device buffer failed";
    reqs.emplace_back(MPI_REQUEST_NULL);
    if (local.empty() &&
        MPI_Isend(bufs->send(i), static_cast<int>(sizes[i]), MPI_BYTE, next, 0, comm, &reqs.back()) != MPI_SUCCESS)
      local = "MPI_Isend of a device buffer failed";
  }
  // Wait with a deadline: a peer that failed to post leaves ours unmatched.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int done = 0;
  while (local.empty() && !done) {
    if (MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
      local = "MPI_Testall on device buffers failed";
    else if (!done && std::chrono::steady_clock::now() > deadline)
      local = "no device-buffer transfer completed within 30 s";
    else if (!done)
      std::this_thread::yield();
  }
  if (!local.empty()) {
    for (MPI_Request& r : reqs)
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
  } else {
    for (size_t i = 0; i < sizes.size() && local.empty(); ++i)
      if (!bufs->holds_pattern(i, prev))
        local = "the " + std::to_string(sizes[i]) + "-byte device buffer from rank " + std::to_string(prev) +
                " arrived altered";
  }
  failed = agree_on(comm, size, local);
  if (why) *why = failed;
  return failed.empty();
}

}  // namespace lvx
