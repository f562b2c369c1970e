// Every header included by the per-ISA kernel file (attend_cpu.cpp, compiled once
// per x86-64 level) puts its inline code in lvx::cpu::LVX_CPU_ISA (an inline
// namespace), so the copies built with different instruction sets never share a
// symbol: the linker cannot hand an AVX-512 copy to a CPU without AVX-512. For the
// same reason that file instantiates no shared template or inline function of other
// headers (std containers, std::function, ThreadPool members): it reaches them through
// the plain functions of parallel.hpp, compiled once.
#pragma once

#ifndef LVX_CPU_ISA
#define LVX_CPU_ISA generic
#endif
