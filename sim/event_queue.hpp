#pragma once
/// \file
/// The event queue: a total order on events and typed, move-only callbacks.
///
/// Ordering invariant (the only thing that may decide which of two events runs first):
///   key = (time, phase, sequence number), compared lexicographically.
/// The sequence number is the insertion counter of this queue, so two events at the same time
/// and phase run in the order they were scheduled. No pointer, hash order or wall clock enters
/// the key, hence replays are bit-identical.
///
/// Storage: a 4-ary min-heap of 24-byte keys (cache friendly: one heap node's children share a
/// cache line pair) pointing into a slab of callback slots that are recycled through a free
/// list, so a steady-state simulation allocates nothing per event as long as the callback's
/// captures fit in `kInlineBytes`. Larger callbacks fall back to one heap allocation.
///
/// Cancellation is O(1): the slot's generation is bumped and its callback destroyed; the stale
/// heap entry is skipped when it reaches the top.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "sim/time.hpp"

namespace moesim::sim {

/// Same-time ordering classes. Use the phase that states WHY an event must run before another
/// at the same instant; most events are `kNormal`.
enum class Phase : std::uint8_t {
  kComplete = 0,  ///< an activity ends and releases its resources
  kNormal = 1,    ///< ordinary work: start activities, send messages
  kObserve = 2,   ///< sampling statistics after all state changes at this instant
};

/// Handle for cancelling a scheduled event. Default-constructed handles refer to nothing.
struct EventId {
  std::uint32_t slot = ~0U;
  std::uint32_t generation = 0;
  bool valid() const { return slot != ~0U; }
};

/// A small move-only callable `void()` with inline storage.
class Callback {
 public:
  static constexpr std::size_t kInlineBytes = 48;

  Callback() = default;
  template <class F, class D = std::decay_t<F>, class = std::enable_if_t<!std::is_same_v<D, Callback>>>
  Callback(F&& f) {  // NOLINT(google-explicit-constructor): lambdas convert implicitly
    if constexpr (sizeof(D) <= kInlineBytes && alignof(D) <= alignof(std::max_align_t) &&
                  std::is_nothrow_move_constructible_v<D>) {
      ::new (static_cast<void*>(buf_)) D(std::forward<F>(f));
      ops_ = &inline_ops<D>;
    } else {
      *reinterpret_cast<D**>(buf_) = new D(std::forward<F>(f));
      ops_ = &heap_ops<D>;
    }
  }
  Callback(Callback&& o) noexcept : ops_(o.ops_) {
    if (ops_) ops_->move(buf_, o.buf_);
    o.ops_ = nullptr;
  }
  Callback& operator=(Callback&& o) noexcept {
    if (this != &o) {
      reset();
      ops_ = o.ops_;
      if (ops_) ops_->move(buf_, o.buf_);
      o.ops_ = nullptr;
    }
    return *this;
  }
  Callback(const Callback&) = delete;
  Callback& operator=(const Callback&) = delete;
  ~Callback() { reset(); }

  explicit operator bool() const { return ops_ != nullptr; }
  void operator()() { ops_->call(buf_); }
  void reset() {
    if (ops_) {
      ops_->destroy(buf_);
      ops_ = nullptr;
    }
  }

 private:
  struct Ops {
    void (*call)(void*);
    void (*move)(void* dst, void* src);  // move-construct into dst, destroy src
    void (*destroy)(void*);
  };
  template <class D>
  static constexpr Ops inline_ops{
      [](void* p) { (*std::launder(static_cast<D*>(p)))(); },
      [](void* dst, void* src) {
        D* s = std::launder(static_cast<D*>(src));
        ::new (dst) D(std::move(*s));
        s->~D();
      },
      [](void* p) { std::launder(static_cast<D*>(p))->~D(); }};
  template <class D>
  static constexpr Ops heap_ops{[](void* p) { (**static_cast<D**>(p))(); },
                                [](void* dst, void* src) {
                                  *static_cast<D**>(dst) = *static_cast<D**>(src);
                                  *static_cast<D**>(src) = nullptr;
                                },
                                [](void* p) { delete *static_cast<D**>(p); }};

  alignas(std::max_align_t) unsigned char buf_[kInlineBytes];
  const Ops* ops_ = nullptr;
};

class EventQueue {
 public:
  EventQueue() { heap_.reserve(1024); }

  /// Schedule `cb` at absolute time `t`. Cost: O(log4 n), no allocation in steady state.
  EventId push(SimTime t, Phase phase, Callback cb) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[slot];
    s.cb = std::move(cb);
    const std::uint64_t order = (static_cast<std::uint64_t>(phase) << kSeqBits) | (next_seq_++ & kSeqMask);
    heap_.push_back(Entry{t.ps(), order, slot, s.generation});
    sift_up(heap_.size() - 1);
    ++live_;
    return EventId{slot, s.generation};
  }

  /// Cancel a pending event. Returns false if it already ran or was cancelled.
  bool cancel(EventId id) {
    if (!id.valid() || id.slot >= slots_.size()) return false;
    Slot& s = slots_[id.slot];
    if (s.generation != id.generation || !s.cb) return false;
    s.cb.reset();
    ++s.generation;  // the heap entry becomes stale; its slot is freed when popped
    --live_;
    return true;
  }

  /// Number of pending (not cancelled) events.
  std::size_t size() const { return live_; }
  bool empty() const { return live_ == 0; }

  /// Pops the earliest live event into (t, cb). Returns false when none is left.
  bool pop(SimTime& t, Callback& cb) {
    while (!heap_.empty()) {
      const Entry top = heap_[0];
      pop_top();
      Slot& s = slots_[top.slot];
      if (s.generation != top.generation) {  // cancelled: recycle the slot now
        free_.push_back(top.slot);
        continue;
      }
      t = SimTime::from_ps(top.time);
      cb = std::move(s.cb);
      ++s.generation;
      free_.push_back(top.slot);
      --live_;
      return true;
    }
    return false;
  }

  /// Time of the earliest live event, or SimTime::max() if none.
  SimTime peek_time() {
    while (!heap_.empty()) {
      const Entry& top = heap_[0];
      if (slots_[top.slot].generation == top.generation) return SimTime::from_ps(top.time);
      free_.push_back(top.slot);
      pop_top();
    }
    return SimTime::max();
  }

  std::uint64_t scheduled_total() const { return next_seq_; }

 private:
  static constexpr int kSeqBits = 56;
  static constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << kSeqBits) - 1;

  struct Entry {
    std::int64_t time;
    std::uint64_t order;  // phase in the top 8 bits, insertion sequence below
    std::uint32_t slot;
    std::uint32_t generation;
    bool operator<(const Entry& o) const { return time < o.time || (time == o.time && order < o.order); }
  };
  struct Slot {
    Callback cb;
    std::uint32_t generation = 0;
  };

  void sift_up(std::size_t i) {
    const Entry e = heap_[i];
    while (i > 0) {
      const std::size_t parent = (i - 1) / 4;
      if (!(e < heap_[parent])) break;
      heap_[i] = heap_[parent];
      i = parent;
    }
    heap_[i] = e;
  }
  void pop_top() {
    const Entry last = heap_.back();
    heap_.pop_back();
    const std::size_t n = heap_.size();
    if (n == 0) return;
    std::size_t i = 0;
    for (;;) {
      const std::size_t c0 = 4 * i + 1;
      if (c0 >= n) break;
      std::size_t best = c0;
      const std::size_t cend = c0 + 4 < n ? c0 + 4 : n;
      for (std::size_t c = c0 + 1; c < cend; ++c)
        if (heap_[c] < heap_[best]) best = c;
      if (!(heap_[best] < last)) break;
      heap_[i] = heap_[best];
      i = best;
    }
    heap_[i] = last;
  }

  std::vector<Entry> heap_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
  std::uint64_t next_seq_ = 0;
  std::size_t live_ = 0;
};

}  // namespace moesim::sim
