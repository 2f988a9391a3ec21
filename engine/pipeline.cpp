#include "engine/pipeline.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <stdexcept>

#include <fmt/format.h>

#include "engine/scenario.hpp"

namespace moesim::engine {

namespace {

/// Expands repetitions: the result holds only E, t, m, L and '|'. Errors name the character
/// (1-based) of the original text.
class LayoutExpander {
 public:
  explicit LayoutExpander(const std::string& t) : t_(t) {}

  std::string run() {
    std::string out = group(0);
    if (i_ < t_.size()) fail(i_, "')' without a matching '('");
    return out;
  }

 private:
  [[noreturn]] void fail(std::size_t at, const std::string& why) const {
    throw std::invalid_argument(fmt::format("pipeline_layout \"{}\", character {}: {}", t_, at + 1, why));
  }
  void skip() {
    while (i_ < t_.size() && (t_[i_] == ',' || std::isspace(static_cast<unsigned char>(t_[i_])) != 0)) ++i_;
  }
  /// "*N" after an item, or 1.
  std::int64_t repeat() {
    skip();
    if (i_ >= t_.size() || t_[i_] != '*') return 1;
    const std::size_t star = i_++;
    skip();
    std::int64_t n = 0;
    std::size_t digits = 0;
    while (i_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[i_])) != 0) {
      n = n * 10 + (t_[i_] - '0');
      if (n > 100000) fail(star, "repetition count over 100000");
      ++i_, ++digits;
    }
    if (digits == 0) fail(star, "'*' must be followed by a repetition count");
    if (n < 1) fail(star, "repetition count must be >= 1");
    return n;
  }
  std::string group(int depth) {
    std::string out;
    for (;;) {
      skip();
      if (i_ >= t_.size() || t_[i_] == ')') {
        if (depth > 0 && i_ >= t_.size()) fail(t_.size() - 1, "'(' is never closed");
        return out;
      }
      const char c = t_[i_];
      std::string item;
      if (c == '(') {
        const std::size_t open = i_++;
        if (depth > 8) fail(open, "groups nested more than 8 deep");
        item = group(depth + 1);
        if (i_ >= t_.size() || t_[i_] != ')') fail(open, "'(' is never closed");
        ++i_;
      } else if (c == 'E' || c == 't' || c == 'm' || c == 'L' || c == '|') {
        item = std::string(1, c);
        ++i_;
      } else {
        fail(i_, fmt::format("unexpected '{}' (expected E, t, m, L, |, ( ), *N)", c));
      }
      const std::int64_t n = repeat();
      if (static_cast<double>(out.size()) + static_cast<double>(item.size()) * static_cast<double>(n) > 1e6)
        fail(i_ - 1, "the expanded layout is longer than 1,000,000 symbols");
      for (std::int64_t k = 0; k < n; ++k) out += item;
    }
  }
  const std::string& t_;
  std::size_t i_ = 0;
};

}  // namespace

std::vector<int> parse_pipeline_layout(const std::string& text, int virtual_stages, int layers) {
  const std::string flat = LayoutExpander(text).run();
  std::vector<int> counts(1, 0);
  bool seen_e = false, seen_l = false;
  for (std::size_t k = 0; k < flat.size(); ++k) {
    const char c = flat[k];
    const auto fail = [&](const std::string& why) {
      throw std::invalid_argument(fmt::format("pipeline_layout \"{}\": {}", text, why));
    };
    if (seen_l) fail("'L' (the loss) must be the last symbol");
    switch (c) {
      case '|':
        counts.push_back(0);
        break;
      case 't':
        ++counts.back();
        break;
      case 'E':
        if (seen_e || counts.size() != 1 || counts.front() != 0) fail("'E' (the embedding) must open the first stage");
        seen_e = true;
        break;
      case 'L':
        seen_l = true;
        break;
      case 'm':
        fail("'m' (a multi-token-prediction layer) is not modelled yet; leave it out of the layout");
        break;
      default:
        break;
    }
  }
  if (!seen_e) throw std::invalid_argument(fmt::format("pipeline_layout \"{}\": must start with 'E'", text));
  if (!seen_l) throw std::invalid_argument(fmt::format("pipeline_layout \"{}\": must end with 'L'", text));
  if (static_cast<int>(counts.size()) != virtual_stages)
    throw std::invalid_argument(
        fmt::format("pipeline_layout \"{}\" has {} stages but pp x vpp = {}", text, counts.size(), virtual_stages));
  int total = 0;
  for (int c : counts) total += c;
  if (total != layers)
    throw std::invalid_argument(
        fmt::format("pipeline_layout \"{}\" places {} decoder layers but the model has {}", text, total, layers));
  return counts;
}

std::vector<int> even_pipeline_split(int layers, int virtual_stages, bool embedding, bool loss, bool require_exact) {
  if (virtual_stages < 1) throw std::invalid_argument("no pipeline stages");
  const int slots = layers + (embedding ? 1 : 0) + (loss ? 1 : 0);
  if (require_exact && slots % virtual_stages != 0) {
    std::string what = fmt::format("{} layers", layers);
    if (embedding) what += " + the embedding";
    if (loss) what += " + the loss";
    if (embedding || loss) what += fmt::format(" = {} slots", slots);
    throw std::invalid_argument(
        fmt::format("{} do not split evenly over pp x vpp = {} virtual stages (give a "
                    "pipeline_layout for an uneven split)",
                    what, virtual_stages));
  }
  std::vector<int> counts;
  for (int v = 0; v < virtual_stages; ++v) counts.push_back(slots / virtual_stages + (v < slots % virtual_stages));
  if (embedding) --counts.front();
  if (loss) --counts.back();
  // A stage may be left with the embedding or the loss alone (Megatron allows it: with pp * vpp =
  // layers + 2 the first and last virtual stages hold no decoder layer); any other stage needs one.
  for (std::size_t v = 0; v < counts.size(); ++v)
    if (counts[v] < 1 && !(counts[v] == 0 && ((v == 0 && embedding) || (v + 1 == counts.size() && loss))))
      throw std::invalid_argument(
          fmt::format("{} layers leave virtual stage {} of {} without a decoder layer", layers, v, virtual_stages));
  return counts;
}

std::vector<int> pipeline_stage_layers(const ParallelSpec& p, int layers) {
  if (!p.stage_layers.empty()) {
    if (static_cast<int>(p.stage_layers.size()) != p.virtual_stages())
      throw std::invalid_argument("pipeline stage layers do not match pp x vpp");
    return p.stage_layers;
  }
  if (p.vpp == 1 && !p.account_for_embedding && !p.account_for_loss && layers < p.pp)
    throw std::invalid_argument(fmt::format("{} layers cannot be split over {} pipeline stages", layers, p.pp));
  return even_pipeline_split(layers, p.virtual_stages(), p.account_for_embedding, p.account_for_loss,
                             p.vpp > 1 || p.account_for_embedding || p.account_for_loss);
}

std::vector<std::pair<int, int>> virtual_stage_ranges(const std::vector<int>& counts) {
  std::vector<std::pair<int, int>> out;
  int first = 0;
  for (int c : counts) {
    out.emplace_back(first, first + c);
    first += c;
  }
  return out;
}

namespace {
/// Forwards rank `rank` runs before its first backward, before capping at the M * vpp it has:
/// pp - rank - 1 for plain 1F1B, 2 (pp - rank - 1) + (vpp - 1) pp for Megatron's interleaved one.
int uncapped_warmup(int pp, int vpp, int rank) {
  return vpp == 1 ? pp - rank - 1 : 2 * (pp - rank - 1) + (vpp - 1) * pp;
}
}  // namespace

std::vector<PipelineAction> pipeline_schedule(int pp, int vpp, int micro_batches, int rank, bool train) {
  if (pp < 1 || vpp < 1 || micro_batches < 1 || rank < 0 || rank >= pp)
    throw std::invalid_argument("pipeline_schedule: bad arguments");
  if (vpp > 1 && micro_batches % pp != 0)
    throw std::invalid_argument(fmt::format(
        "the interleaved schedule runs micro-batches in groups of pp: micro_batches {} is not a multiple of pp {}",
        micro_batches, pp));
  // The k-th forward (backward) of the rank: micro-batches in groups of pp, each group through
  // the local chunks in order (backward: in reverse). With vpp = 1 this is micro-batch k, chunk 0.
  const int group = pp * vpp;
  const auto fwd_at = [&](int k) { return PipelineAction{true, (k / group) * pp + k % pp, (k % group) / pp}; };
  const auto bwd_at = [&](int k) {
    return PipelineAction{false, (k / group) * pp + k % pp, vpp - 1 - (k % group) / pp};
  };
  const int total = micro_batches * vpp;
  std::vector<PipelineAction> out;
  if (!train) {
    for (int k = 0; k < total; ++k) out.push_back(fwd_at(k));
    return out;
  }
  const int warm = std::min(total, uncapped_warmup(pp, vpp, rank));
  for (int k = 0; k < warm; ++k) out.push_back(fwd_at(k));
  for (int i = 0; i < total - warm; ++i) {
    out.push_back(fwd_at(warm + i));
    out.push_back(bwd_at(i));
  }
  for (int k = total - warm; k < total; ++k) out.push_back(bwd_at(k));
  return out;
}

int pipeline_inflight_chunks(int pp, int vpp, int micro_batches, int rank) {
  return std::min(micro_batches * vpp, uncapped_warmup(pp, vpp, rank) + 1);
}

}  // namespace moesim::engine
