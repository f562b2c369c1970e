// One error type for the whole library. Every failing MPI, CUDA or NCCL call is
// turned into an lvx::Error carrying a status code and text that names the file,
// the line, the rank and the library's own message.
#pragma once

#include <stdexcept>
#include <string>

namespace lvx {

enum class Status : int {
  ok = 0,
  invalid_argument = 1,  // bad input on this or another rank
  mismatch = 2,          // ranks disagree on something they must share
  mpi = 3,
  cuda = 4,
  nccl = 5,
  unsupported = 6,       // valid request this build or device cannot do
  out_of_memory = 7,
  internal = 8,
};

const char* status_name(Status s);

class Error : public std::runtime_error {
 public:
  Error(Status s, const std::string& what) : std::runtime_error(what), status_(s) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

// Rank used in messages; set when a context is made (-1: none yet).
void set_error_rank(int rank);
int error_rank();

[[noreturn]] void raise_error(Status s, const char* file, int line, const std::string& text);

}  // namespace lvx

#define LVX_FAIL(status, text) ::lvx::raise_error((status), __FILE__, __LINE__, (text))
#define LVX_REQUIRE(cond, text)                                                   \
  do {                                                                            \
    if (!(cond)) ::lvx::raise_error(::lvx::Status::invalid_argument, __FILE__, __LINE__, (text)); \
  } while (0)
