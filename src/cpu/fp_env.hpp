// Scoped flush-to-zero / denormals-are-zero for the calling thread. exp() of the
// masked and far-below-max scores underflows, and products of such tiny P with V
// or of a decaying running O make subnormal numbers, which cost a microcode assist
// per operation on many Intel cores. The caller's mode is restored on scope exit.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace lvx::cpu {

class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bits 15 (FTZ) and 6 (DAZ)
  FlushDenormals() : saved_(_mm_getcsr()) {
    if ((saved_ & kFtzDaz) != kFtzDaz) _mm_setcsr(saved_ | kFtzDaz);
  }
  ~FlushDenormals() {  // control bits back; the sticky exception flags (bits 0-5) stay raised
    if ((saved_ & kFtzDaz) != kFtzDaz) _mm_setcsr((_mm_getcsr() & 0x3fu) | (saved_ & ~0x3fu));
  }
#elif defined(__aarch64__)
  FlushDenormals() {
    __asm__ volatile("mrs %0, fpcr" : "=r"(saved_));
    if (!(saved_ & kFz)) __asm__ volatile("msr fpcr, %0" : : "r"(saved_ | kFz));
  }
  ~FlushDenormals() {
    if (!(saved_ & kFz)) __asm__ volatile("msr fpcr, %0" : : "r"(saved_));
  }
  static constexpr unsigned long kFz = 1ul << 24;  // FPCR.FZ
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__aarch64__)
  unsigned long saved_ = 0;
#else
  unsigned saved_ = 0;
#endif
};

}  // namespace lvx::cpu
