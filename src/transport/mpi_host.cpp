#include "transport/mpi_host.hpp"

#include <chrono>
#include <map>
#include <vector>

#include "core/backend.hpp"
#include "core/mpi_check.hpp"

namespace lvx {

namespace {

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, Backend& backend) : comm_(comm), backend_(backend) {}
  ~MpiTransport() override {
    // Never leave requests dangling on buffers that are about to be freed.
    for (auto& [ticket, reqs] : groups_)
      for (auto& r : reqs) {
        if (r == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
  }

  std::string name() const override { return "mpi"; }

  int post(const std::vector<Message>& sends, const std::vector<Message>& recvs) override {
    std::vector<MPI_Request> reqs;
    reqs.reserve(sends.size() + recvs.size());
    for (const auto& m : recvs) {
      reqs.emplace_back();
      LVX_MPI_CHECK(MPI_Irecv(m.buf, checked_count(m.bytes), MPI_BYTE, m.peer, m.tag, comm_, &reqs.back()));
      counters.bytes_recv += m.bytes;
    }
    for (const auto& m : sends) {
      reqs.emplace_back();
      LVX_MPI_CHECK(MPI_Isend(m.buf, checked_count(m.bytes), MPI_BYTE, m.peer, m.tag, comm_, &reqs.back()));
      counters.bytes_sent += m.bytes;
    }
    const int ticket = next_ticket_++;
    groups_.emplace(ticket, std::move(reqs));
    return ticket;
  }

  void wait(int ticket) override {
    auto it = groups_.find(ticket);
    if (it == groups_.end()) return;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<MPI_Request> reqs = std::move(it->second);
    groups_.erase(it);
    if (!reqs.empty())
      LVX_MPI_CHECK(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
    counters.blocked_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  void wait_all() override {
    while (!groups_.empty()) wait(groups_.begin()->first);
  }

 private:
  static int checked_count(size_t bytes) {
    if (bytes > static_cast<size_t>(INT32_MAX))
      LVX_FAIL(Status::unsupported, "a single message of " + std::to_string(bytes) +
                                        " bytes exceeds MPI's int count; use more ranks");
    return static_cast<int>(bytes);
  }

  MPI_Comm comm_;
  Backend& backend_;
  std::map<int, std::vector<MPI_Request>> groups_;
  int next_ticket_ = 1;
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm, Backend& backend) {
  return std::make_unique<MpiTransport>(comm, backend);
}

}  // namespace lvx
