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
/// Storage: a 4-ary min-heap of 16-byte entries (a node's four children fill one 64-byte cache
/// line) pointing into chunked, address-stable callback slots recycled through a free list, so
/// a steady-state simulation allocates nothing per event as long as the callback's captures fit
/// in `kInlineBytes` (larger ones fall back to one heap allocation). Callbacks run in place.
///
/// Cancellation is O(1): the slot forgets its sequence number and destroys the callback; the
/// stale heap entry is recognised (sequence mismatch) and skipped when it reaches the top.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
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
  static constexpr Ops inline_ops{[](void* p) { (*std::launder(static_cast<D*>(p)))(); },
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
  /// Capacity limits of the packed 64-bit ordering key (checked, never wrapped).
  static constexpr int kSlotBits = 22;  ///< up to 4,194,304 simultaneously pending events
  static constexpr int kSeqBits = 40;   ///< up to 1.1e12 events scheduled per simulation
  static constexpr std::uint64_t kMaxPending = std::uint64_t{1} << kSlotBits;
  static constexpr std::uint64_t kMaxScheduled = std::uint64_t{1} << kSeqBits;

  EventQueue() { heap_.reserve(1024); }
  EventQueue(const EventQueue&) = delete;
  EventQueue& operator=(const EventQueue&) = delete;

  /// Schedule `cb` at absolute time `t`. Cost: O(log4 n), no allocation in steady state.
  EventId push(SimTime t, Phase phase, Callback cb) {
    if (next_seq_ >= kMaxScheduled) throw std::length_error("EventQueue: more than 2^40 events scheduled");
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      if (num_slots_ >= kMaxPending) throw std::length_error("EventQueue: more than 2^22 pending events");
      slot = num_slots_++;
      if ((slot >> kChunkBits) >= chunks_.size()) chunks_.push_back(std::make_unique<Slot[]>(kChunkSize));
    }
    Slot& s = slot_at(slot);
    s.cb = std::move(cb);
    s.seq = next_seq_;
    const std::uint64_t key =
        (static_cast<std::uint64_t>(phase) << (kSeqBits + kSlotBits)) | (next_seq_ << kSlotBits) | slot;
    ++next_seq_;
    heap_.push_back(Entry{static_cast<std::uint64_t>(t.ps()) ^ kSignBit, key});
    sift_up(heap_.size() - 1);
    ++live_;
    return EventId{slot, static_cast<std::uint32_t>(s.seq)};
  }

  /// Cancel a pending event. Returns false if it already ran or was cancelled.
  bool cancel(EventId id) {
    if (!id.valid() || id.slot >= num_slots_) return false;
    Slot& s = slot_at(id.slot);
    if (static_cast<std::uint32_t>(s.seq) != id.generation || !s.cb || s.running) return false;
    s.cb.reset();
    s.seq = kNoSeq;  // the heap entry becomes stale; its slot is freed when popped
    --live_;
    return true;
  }

  /// Number of pending (not cancelled) events.
  std::size_t size() const { return live_; }
  bool empty() const { return live_ == 0; }

  /// Runs the earliest live event if its time is <= limit: sets `now` to its time first, then
  /// invokes the callback in place (no move). Returns false when none is due.
  template <class SetNow>
  bool run_next(SimTime limit, SetNow&& set_now) {
    while (!heap_.empty()) {
      const Entry top = heap_[0];
      const auto slot = static_cast<std::uint32_t>(top.key & kSlotMask);
      Slot& s = slot_at(slot);
      if (s.seq != ((top.key >> kSlotBits) & kSeqMask)) {  // cancelled: recycle the slot now
        pop_top();
        free_.push_back(slot);
        continue;
      }
      const SimTime t = SimTime::from_ps(static_cast<std::int64_t>(top.time ^ kSignBit));
      if (t > limit) return false;
      pop_top();
      set_now(t);
      --live_;
      s.running = true;
      s.cb();  // may push new events: slots live in stable chunks, so `s` stays valid
      s.running = false;
      s.cb.reset();
      s.seq = kNoSeq;
      free_.push_back(slot);
      return true;
    }
    return false;
  }

  /// Time of the earliest live event, or SimTime::max() if none.
  SimTime peek_time() {
    while (!heap_.empty()) {
      const Entry& top = heap_[0];
      const auto slot = static_cast<std::uint32_t>(top.key & kSlotMask);
      if (slot_at(slot).seq == ((top.key >> kSlotBits) & kSeqMask))
        return SimTime::from_ps(static_cast<std::int64_t>(top.time ^ kSignBit));
      pop_top();
      free_.push_back(slot);
    }
    return SimTime::max();
  }

  std::uint64_t scheduled_total() const { return next_seq_; }

 private:
  static constexpr std::uint64_t kSignBit = std::uint64_t{1} << 63;  // maps int64 order onto uint64
  static constexpr std::uint64_t kSlotMask = (std::uint64_t{1} << kSlotBits) - 1;
  static constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << kSeqBits) - 1;
  static constexpr std::uint64_t kNoSeq = ~std::uint64_t{0};
  static constexpr int kChunkBits = 12;
  static constexpr std::size_t kChunkSize = std::size_t{1} << kChunkBits;

  /// 16 bytes: biased time, then (phase | sequence | slot). Sequence numbers are unique, so
  /// the slot bits never decide an order; they only locate the callback.
  struct Entry {
    std::uint64_t time;
    std::uint64_t key;
    bool operator<(const Entry& o) const {
      return (static_cast<uint128>(time) << 64 | key) < (static_cast<uint128>(o.time) << 64 | o.key);
    }
  };
  struct Slot {
    Callback cb;
    std::uint64_t seq = kNoSeq;
    bool running = false;
  };

  Slot& slot_at(std::uint32_t i) { return chunks_[i >> kChunkBits][i & (kChunkSize - 1)]; }

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
  std::vector<std::unique_ptr<Slot[]>> chunks_;
  std::uint32_t num_slots_ = 0;
  std::vector<std::uint32_t> free_;
  std::uint64_t next_seq_ = 0;
  std::size_t live_ = 0;
};

}  // namespace moesim::sim
