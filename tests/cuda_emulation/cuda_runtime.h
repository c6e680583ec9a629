// The CUDA runtime as far as csrc/cuda/*.cu use it, emulated on the CPU, so that the CUDA kernels
// run here (tests/test_cuda_emulation.py) where no GPU is. Compiled with g++, not nvcc: the kernels
// take their host branches (no __CUDA_ARCH__), which exist for this.
//
// - Every launch runs its blocks one after the other, and the threads of a block as fibers
//   (ucontext) on the calling thread: __syncthreads() parks the fiber until every thread of the
//   block has reached it. A block whose threads do not all reach the same barrier (some exited,
//   some waiting) is an error, as it is undefined on a GPU.
// - Between two barriers the threads run one at a time, in an order set by PK_EMU_ORDER (forward,
//   reverse, or a seeded shuffle per phase), so a missing barrier shows as a wrong result.
// - PK_EMU_MAX_BLOCKS=n launches at most n blocks, so the kernels' grid-stride loops (which cover
//   work past the 2^31 - 1 block limit on a GPU) take more than one turn.
// - __shared__ is `static`: one copy per kernel instantiation, shared by the block's threads; blocks
//   and launches never overlap (one launch at a time, under a mutex).
// - Kernel arguments are copied at launch, as CUDA copies them to the device.
// - `kernel<<<grid, block, smem, stream>>>(args)` is not C++: tests/cuda_emulation/build.py rewrites
//   it to `::pk_emu::launch(kernel, grid, block, smem, stream)(args)` in its copies of the sources.
#pragma once

// Our keywords first, so the CUDA headers included after this one keep them (host_defines.h only
// defines those not yet defined).
#define __shared__ static
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)

#include <cuda_bf16.h>  // the real half / bfloat16 types: their host conversions round as the device's
#include <cuda_fp16.h>
#include <ucontext.h>
#include <vector_types.h>  // dim3, uint3

#ifndef __noinline__  // nvcc's keyword; host_defines.h leaves it to nvcc
#define __noinline__ __attribute__((noinline))
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// cudaStream_t, cudaError_t and the runtime's declarations come with the headers above;
// entry_points.cpp defines the two functions the kernels' launchers call.

namespace pk_emu {

inline uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;

struct Fiber {
  ucontext_t ctx;
  bool done = false;
  bool waiting = false;  // parked at __syncthreads
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  ucontext_t scheduler;
  int current = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline Block& block() {
  static Block b;
  return b;
}

inline void syncthreads() {
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  f.waiting = true;
  swapcontext(&f.ctx, &b.scheduler);
}

inline void fiber_main() {
  Block& b = block();
  b.body(b.body_arg);
  b.fibers[b.current].done = true;  // returns to uc_link, the scheduler
}

// Lanes in the order they run within one phase (between two barriers).
inline std::vector<int> phase_order(int n, std::mt19937& rng) {
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  const char* mode = std::getenv("PK_EMU_ORDER");
  const std::string m = mode ? mode : "forward";
  if (m == "reverse") std::reverse(order.begin(), order.end());
  else if (m == "shuffle") std::shuffle(order.begin(), order.end(), rng);
  else if (m != "forward") throw std::runtime_error("PK_EMU_ORDER must be forward, reverse or shuffle");
  return order;
}

inline long long& launches() {
  static long long n = 0;
  return n;
}

// Runs body(arg) once per thread of the grid; throws on a barrier that not every thread reaches.
inline void run_grid(dim3 grid, dim3 blk, void (*body)(void*), void* arg) {
  static std::mutex mu;
  const std::lock_guard<std::mutex> lock(mu);
  if (grid.y != 1 || grid.z != 1 || blk.y != 1 || blk.z != 1)
    throw std::runtime_error("pk_emu: only 1-D grids and blocks are emulated");
  if (blk.x == 0 || blk.x > 1024) throw std::runtime_error("pk_emu: block size out of range");
  if (grid.x == 0) throw std::runtime_error("pk_emu: empty grid (a CUDA launch error)");
  if (const char* cap = std::getenv("PK_EMU_MAX_BLOCKS"))
    grid.x = std::min<unsigned int>(grid.x, static_cast<unsigned int>(std::max(1, std::atoi(cap))));
  ++launches();
  constexpr std::size_t kStack = 256 * 1024;
  Block& b = block();
  const int n = static_cast<int>(blk.x);
  b.fibers.assign(n, Fiber{});
  b.stacks.resize(n);
  for (auto& s : b.stacks) s.resize(kStack);
  b.body = body;
  b.body_arg = arg;
  grid_dim = grid;
  block_dim = blk;
  std::mt19937 rng(12345);
  for (unsigned int bx = 0; bx < grid.x; ++bx) {
    block_idx = uint3{bx, 0, 0};
    for (int t = 0; t < n; ++t) {
      Fiber& f = b.fibers[t];
      f = Fiber{};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = b.stacks[t].data();
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &b.scheduler;
      makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
      for (int t : phase_order(n, rng)) {
        Fiber& f = b.fibers[t];
        if (f.done) continue;
        f.waiting = false;
        b.current = t;
        thread_idx = uint3{static_cast<unsigned int>(t), 0, 0};
        swapcontext(&b.scheduler, &f.ctx);
      }
      int done = 0, waiting = 0;
      for (const Fiber& f : b.fibers) {
        done += f.done;
        waiting += f.waiting;
      }
      if (done == n) break;
      if (waiting != n)
        throw std::runtime_error("pk_emu: __syncthreads() not reached by every thread of block " +
                                 std::to_string(bx) + " (" + std::to_string(done) + " of " +
                                 std::to_string(n) + " threads had exited)");
    }
  }
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, blk;
  template <typename... A>
  void operator()(A&&... args) const {
    std::tuple<std::decay_t<P>...> copied(std::forward<A>(args)...);
    struct Call {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...>* args;
      static void run(void* self) {
        auto* c = static_cast<Call*>(self);
        std::apply(c->kernel, *c->args);
      }
    } call{kernel, &copied};
    run_grid(grid, blk, &Call::run, &call);
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 blk, std::size_t smem, cudaStream_t) {
  if (smem != 0) throw std::runtime_error("pk_emu: dynamic shared memory is not emulated");
  return Launch<P...>{kernel, grid, blk};
}

}  // namespace pk_emu

#define threadIdx (::pk_emu::thread_idx)
#define blockIdx (::pk_emu::block_idx)
#define blockDim (::pk_emu::block_dim)
#define gridDim (::pk_emu::grid_dim)
#define __syncthreads() (::pk_emu::syncthreads())
