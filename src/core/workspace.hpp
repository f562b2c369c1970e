// Buffers a context keeps between calls, grown on demand and reused, so no
// allocation happens inside a ring loop (all are taken before it starts).
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "core/backend.hpp"

namespace lvx {

class Workspace {
 public:
  explicit Workspace(Backend& backend) : backend_(backend) {}
  ~Workspace() { clear(); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // A buffer of at least `bytes` under `name`; its contents are unspecified.
  void* get(const std::string& name, size_t bytes) {
    Slot& s = slots_[name];
    if (s.bytes < bytes || !s.ptr) {
      if (s.ptr) backend_.release(s.ptr);
      s.ptr = nullptr;
      s.bytes = 0;
      s.ptr = backend_.allocate(bytes ? bytes : 64);
      s.bytes = bytes;
    }
    return s.ptr;
  }
  template <typename T>
  T* get_as(const std::string& name, size_t count) {
    return static_cast<T*>(get(name, count * sizeof(T)));
  }
  size_t bytes_held() const {
    size_t n = 0;
    for (const auto& [name, s] : slots_) n += s.bytes;
    return n;
  }
  void clear() {
    for (auto& [name, s] : slots_)
      if (s.ptr) backend_.release(s.ptr);
    slots_.clear();
  }

 private:
  struct Slot {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  Backend& backend_;
  std::map<std::string, Slot> slots_;
};

}  // namespace lvx
