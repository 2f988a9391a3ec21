#include "config/reader.hpp"

#include <deque>
#include <filesystem>
#include <mutex>
#include <sstream>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "config/input_file.hpp"
#include "sim/units.hpp"

namespace moesim::config {

/// Where an overridden subtree came from: `--set` text (no line numbers), or a node of another
/// YAML file (a sweep axis value), whose own marks then locate everything under it.
struct OverrideOrigin {
  std::string assignment;                   ///< "path=value" for --set
  std::shared_ptr<const std::string> file;  ///< set: the value is a node of this file
  std::optional<Location> path_at;          ///< where the path itself is written, if known
};

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------

std::string Location::str() const {
  if (line <= 0) return file;
  return fmt::format("{}:{}:{}", file, line, col);
}

std::string Diagnostic::str() const {
  if (key.empty()) return fmt::format("{}: {}", loc.str(), message);
  return fmt::format("{}: {}: {}", loc.str(), key, message);
}

namespace {
std::string join_diags(const std::vector<Diagnostic>& d) {
  std::string out;
  for (const auto& x : d) {
    if (!out.empty()) out += '\n';
    out += x.str();
  }
  return out;
}
}  // namespace

ConfigError::ConfigError(std::vector<Diagnostic> diags)
    : std::runtime_error(join_diags(diags)), diags_(std::move(diags)) {}

void Diagnostics::error(Location loc, std::string key, std::string message) {
  diags_.push_back(Diagnostic{std::move(loc), std::move(key), std::move(message)});
}

void Diagnostics::throw_if_any() const {
  if (!diags_.empty()) throw ConfigError(diags_);
}

double Range::fallback() const {
  if (contains(0)) return 0;
  if (contains(1)) return 1;
  if (lo_open) return contains(lo + 1) ? lo + 1 : (lo + hi) / 2;
  return lo;
}

std::string Range::describe() const {
  const auto num = [](double v) { return fmt::format("{}", v); };
  if (lo_open && lo == 0 && hi >= 1e308) return "must be > 0";
  if (!lo_open && lo == 0 && hi >= 1e308) return "must be >= 0";
  if (hi >= 1e308) return fmt::format("must be {} {}", lo_open ? ">" : ">=", num(lo));
  if (lo <= -1e308) return fmt::format("must be <= {}", num(hi));
  return fmt::format("must be in [{}, {}]", num(lo), num(hi));
}

// ---------------------------------------------------------------------------------------------
// did-you-mean
// ---------------------------------------------------------------------------------------------

namespace {
// Optimal-string-alignment distance: insertions, deletions, substitutions and transpositions
// of adjacent characters ("trian" -> "train") each cost 1.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  const std::size_t n = a.size();
  const std::size_t m = b.size();
  std::vector<std::size_t> d((n + 1) * (m + 1));
  const auto at = [&](std::size_t i, std::size_t j) -> std::size_t& { return d[i * (m + 1) + j]; };
  for (std::size_t i = 0; i <= n; ++i) at(i, 0) = i;
  for (std::size_t j = 0; j <= m; ++j) at(0, j) = j;
  for (std::size_t i = 1; i <= n; ++i) {
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      at(i, j) = std::min({at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        at(i, j) = std::min(at(i, j), at(i - 2, j - 2) + 1);
    }
  }
  return at(n, m);
}
}  // namespace

std::optional<std::string> did_you_mean(std::string_view word, const std::vector<std::string>& candidates) {
  // Bounded work per hint: no hint for a word longer than any name moesim uses, and candidates
  // whose length alone puts them out of reach are skipped before the quadratic distance.
  constexpr std::size_t kMaxWord = 64;
  if (word.size() > kMaxWord) return std::nullopt;
  const std::size_t reach = std::max<std::size_t>(1, word.size() / 3);
  std::optional<std::string> best;
  std::size_t best_d = ~std::size_t{0};
  for (const auto& c : candidates) {
    if (c.size() > word.size() + reach || c.size() + reach < word.size()) continue;
    const std::size_t d = edit_distance(word, c);
    if (d < best_d || (d == best_d && best && c < *best)) {
      best_d = d;
      best = c;
    }
  }
  // A plausible typo: at most a third of the word's length changed (and at least 1 edit allowed).
  if (best && best_d <= std::max<std::size_t>(1, word.size() / 3) && best_d < word.size()) return best;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

struct Node::Impl {
  YAML::Node node;
  bool present = false;
  std::shared_ptr<std::set<std::string>> known;  // keys queried on this map
  std::shared_ptr<const std::string> file;
  std::shared_ptr<std::map<std::string, OverrideOrigin>> overrides;
  Location parent_loc;  // where to point when this node is missing
};

Node::Node() : impl_(std::make_unique<Impl>()) {}
Node::~Node() = default;
Node::Node(const Node& o) : impl_(std::make_unique<Impl>(*o.impl_)), path_(o.path_), diags_(o.diags_) {}
Node& Node::operator=(const Node& o) {
  if (this != &o) {
    *impl_ = *o.impl_;
    path_ = o.path_;
    diags_ = o.diags_;
  }
  return *this;
}

bool Node::defined() const { return impl_->present; }
bool Node::is_map() const { return impl_->present && impl_->node.IsMap(); }
bool Node::is_sequence() const { return impl_->present && impl_->node.IsSequence(); }
bool Node::is_scalar() const { return impl_->present && impl_->node.IsScalar(); }
bool Node::is_null() const { return impl_->present && impl_->node.IsNull(); }

namespace {
bool path_under(const std::string& path, const std::string& prefix) {
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  if (path.size() == prefix.size()) return true;
  const char c = path[prefix.size()];
  return c == '.' || c == '[';
}
}  // namespace

namespace {
// The most specific override covering `path` (a later `--set a.b` inside an earlier `--set a`).
const OverrideOrigin* override_for(const std::map<std::string, OverrideOrigin>* overrides, const std::string& path) {
  if (overrides == nullptr) return nullptr;
  const OverrideOrigin* best = nullptr;
  std::size_t best_len = 0;
  for (const auto& [p, origin] : *overrides)
    if (path_under(path, p) && (best == nullptr || p.size() > best_len)) {
      best = &origin;
      best_len = p.size();
    }
  return best;
}
}  // namespace

Location Node::location() const {
  const OverrideOrigin* o = override_for(impl_->overrides.get(), path_);
  if (o != nullptr && !o->file) return Location{fmt::format("--set {}", o->assignment), 0, 0};
  if (!impl_->present) return impl_->parent_loc;
  const YAML::Mark m = impl_->node.Mark();
  const std::string file = o != nullptr ? *o->file : impl_->file ? *impl_->file : std::string("<config>");
  if (m.line < 0) return Location{file, 0, 0};
  return Location{file, m.line + 1, m.column + 1};
}

bool Node::has(std::string_view key) const {
  if (!is_map()) return false;
  if (impl_->known) impl_->known->insert(std::string(key));
  const YAML::Node& n = impl_->node;
  return static_cast<bool>(n[std::string(key)]);
}

Node Node::child(std::string_view key) const {
  Node c;
  c.diags_ = diags_;
  c.path_ = path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  c.impl_->file = impl_->file;
  c.impl_->overrides = impl_->overrides;
  c.impl_->parent_loc = location();
  if (is_map()) {
    impl_->known->insert(std::string(key));
    const YAML::Node& parent = impl_->node;
    YAML::Node v = parent[std::string(key)];
    if (v) {
      c.impl_->node = v;
      c.impl_->present = true;
      if (v.IsMap()) c.impl_->known = std::make_shared<std::set<std::string>>();
    }
  }
  return c;
}

std::vector<Node> Node::items() const {
  std::vector<Node> out;
  if (!impl_->present) return out;
  if (!impl_->node.IsSequence()) {
    error("expected a list");
    return out;
  }
  std::size_t i = 0;
  for (const auto& v : impl_->node) {
    Node c;
    c.diags_ = diags_;
    c.path_ = fmt::format("{}[{}]", path_, i++);
    c.impl_->node = static_cast<const YAML::Node&>(v);
    c.impl_->present = true;
    c.impl_->file = impl_->file;
    c.impl_->overrides = impl_->overrides;
    c.impl_->parent_loc = location();
    if (v.IsMap()) c.impl_->known = std::make_shared<std::set<std::string>>();
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<std::pair<std::string, Node>> Node::entries() const {
  std::vector<std::pair<std::string, Node>> out;
  if (!impl_->present) return out;
  if (!impl_->node.IsMap()) {
    error("expected a mapping of name: value");
    return out;
  }
  for (const auto& kv : impl_->node) {
    if (!kv.first.IsScalar()) {
      error("keys must be plain names");
      continue;
    }
    const std::string key = kv.first.Scalar();
    out.emplace_back(key, child(key));
  }
  return out;
}

void Node::error(std::string message) const { diags_->error(location(), path_, std::move(message)); }

void Node::error_at(std::string_view key, std::string message) const {
  const Node c = child(key);
  diags_->error(c.location(), c.path(), std::move(message));
}

void Node::finish(const std::vector<std::string>& also_known) const {
  if (!is_map()) return;
  std::vector<std::string> known(impl_->known->begin(), impl_->known->end());
  known.insert(known.end(), also_known.begin(), also_known.end());
  for (const auto& kv : impl_->node) {
    if (!kv.first.IsScalar()) continue;
    const std::string key = kv.first.Scalar();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    Node c = child(key);
    impl_->known->erase(key);  // child() marked it; keep the record honest
    std::string msg = fmt::format("unknown key '{}'", key);
    if (auto s = did_you_mean(key, known)) msg += fmt::format(" (did you mean '{}'?)", *s);
    // Point at the key itself rather than its value.
    Location loc = c.location();
    // (Keys created by an override have no mark of their own; keep the value's location.)
    const YAML::Mark km = kv.first.Mark();
    const OverrideOrigin* own = override_for(impl_->overrides.get(), c.path());
    const bool created = own != nullptr && own != override_for(impl_->overrides.get(), path_);
    if (loc.line > 0 && km.line >= 0 && !created) loc = Location{loc.file, km.line + 1, km.column + 1};
    if (created && own->path_at) loc = *own->path_at;
    diags_->error(loc, c.path(), std::move(msg));
  }
}

// --- scalar reads ---------------------------------------------------------------------------

namespace {
const char* kind_of(const YAML::Node& n) {
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  if (n.IsNull()) return "empty";
  return "a scalar";
}

bool parse_int_strict(const std::string& s, std::int64_t& out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, out);
  return ec == std::errc() && p == e && b != e;
}

bool parse_double_strict(const std::string& s, double& out) {
  if (s.empty()) return false;
  // Allow only a plain decimal: [-+]digits[.digits][e[-+]digits]; reject inf/nan/hex.
  std::size_t i = 0;
  if (s[i] == '-' || s[i] == '+') ++i;
  std::size_t digits = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    std::size_t ed = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++ed;
    if (ed == 0) return false;
  }
  if (i != s.size()) return false;
  errno = 0;
  out = std::strtod(s.c_str(), nullptr);
  return std::isfinite(out) && !(errno == ERANGE && std::fabs(out) > 1.0);
}
}  // namespace

std::string Node::text() const {
  if (!impl_->present) return {};
  if (impl_->node.IsScalar()) return impl_->node.Scalar();
  if (impl_->node.IsNull()) return "null";
  YAML::Emitter out;
  out << YAML::Flow << impl_->node;
  return out.c_str();
}

std::string Node::as_string() const {
  if (!impl_->present) return {};
  if (!impl_->node.IsScalar()) {
    error(fmt::format("expected a text value, found {}", kind_of(impl_->node)));
    return {};
  }
  return impl_->node.Scalar();
}

std::int64_t Node::as_int(Range r) const {
  if (!impl_->present) return 0;
  if (!impl_->node.IsScalar()) {
    error(fmt::format("expected an integer, found {}", kind_of(impl_->node)));
    return static_cast<std::int64_t>(std::ceil(r.fallback()));
  }
  std::int64_t v = 0;
  if (!parse_int_strict(impl_->node.Scalar(), v)) {
    error(fmt::format("expected an integer, got '{}'", impl_->node.Scalar()));
    return static_cast<std::int64_t>(std::ceil(r.fallback()));
  }
  if (!r.contains(static_cast<double>(v))) {
    error(fmt::format("{} (got {})", r.describe(), v));
    return static_cast<std::int64_t>(std::ceil(r.fallback()));
  }
  return v;
}

double Node::as_double(Range r) const {
  if (!impl_->present) return 0;
  if (!impl_->node.IsScalar()) {
    error(fmt::format("expected a number, found {}", kind_of(impl_->node)));
    return r.fallback();
  }
  double v = 0;
  if (!parse_double_strict(impl_->node.Scalar(), v)) {
    error(fmt::format("expected a number, got '{}'", impl_->node.Scalar()));
    return r.fallback();
  }
  if (!r.contains(v)) {
    error(fmt::format("{} (got {})", r.describe(), v));
    return r.fallback();
  }
  return v;
}

bool Node::as_bool() const {
  if (!impl_->present) return false;
  const std::string s = impl_->node.IsScalar() ? impl_->node.Scalar() : std::string();
  if (s == "true") return true;
  if (s == "false") return false;
  error(fmt::format("expected true or false, got '{}'", s));
  return false;
}

namespace {
template <class F>
auto read_unit(const Node& n, F&& parse) -> std::optional<decltype(parse(std::string_view{}))> {
  if (!n.defined()) return std::nullopt;
  if (!n.is_scalar()) {
    n.error("expected a value with a unit");
    return std::nullopt;
  }
  try {
    return parse(n.as_string());
  } catch (const sim::UnitError& e) {
    n.error(e.what());
  }
  return std::nullopt;
}

double checked(const Node& n, std::optional<double> v, const Range& r) {
  if (!v) return 0;
  if (!r.contains(*v)) n.error(fmt::format("{} (got {})", r.describe(), n.as_string()));
  return *v;
}
}  // namespace

Bytes Node::as_bytes(Range r) const {
  return Bytes{checked(*this, read_unit(*this, [](std::string_view s) { return sim::parse_bytes(s); }), r)};
}
Bandwidth Node::as_bandwidth(Range r) const {
  return Bandwidth{checked(*this, read_unit(*this, [](std::string_view s) { return sim::parse_bandwidth(s); }), r)};
}
FlopRate Node::as_flop_rate(Range r) const {
  return FlopRate{checked(*this, read_unit(*this, [](std::string_view s) { return sim::parse_flop_rate(s); }), r)};
}
sim::SimTime Node::as_time(Range r) const {
  const auto v = read_unit(*this, [](std::string_view s) { return sim::parse_time(s); });
  if (!v) return sim::SimTime{};
  if (!r.contains(static_cast<double>(v->ps())))
    error(fmt::format("{} (got {})", r.lo_open && r.lo == 0 ? "must be > 0" : r.describe() + " picoseconds",
                      as_string()));
  return *v;
}

std::string Node::as_choice(const std::vector<std::string>& choices) const {
  const std::string s = as_string();
  if (!defined() || !is_scalar()) return s;
  if (std::find(choices.begin(), choices.end(), s) != choices.end()) return s;
  std::string list;
  for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
  std::string msg = fmt::format("'{}' is not one of: {}", s, list);
  if (auto m = did_you_mean(s, choices)) msg += fmt::format(" (did you mean '{}'?)", *m);
  error(msg);
  return s;
}

// --- keyed reads ----------------------------------------------------------------------------

namespace {
void missing(const Node& parent, std::string_view key) { parent.error_at(key, "required key is missing"); }
}  // namespace

std::string Node::req_string(std::string_view key) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), std::string();
  return c.as_string();
}
std::string Node::opt_string(std::string_view key, std::string dflt) const {
  Node c = child(key);
  return c.defined() ? c.as_string() : dflt;
}
std::int64_t Node::req_int(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), static_cast<std::int64_t>(std::ceil(r.fallback()));
  return c.as_int(r);
}
std::int64_t Node::opt_int(std::string_view key, std::int64_t dflt, Range r) const {
  Node c = child(key);
  return c.defined() ? c.as_int(r) : dflt;
}
double Node::req_double(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), r.fallback();
  return c.as_double(r);
}
double Node::opt_double(std::string_view key, double dflt, Range r) const {
  Node c = child(key);
  return c.defined() ? c.as_double(r) : dflt;
}
bool Node::opt_bool(std::string_view key, bool dflt) const {
  Node c = child(key);
  return c.defined() ? c.as_bool() : dflt;
}
Bytes Node::req_bytes(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), Bytes{};
  return c.as_bytes(r);
}
std::optional<Bytes> Node::opt_bytes(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return std::nullopt;
  return c.as_bytes(r);
}
Bandwidth Node::req_bandwidth(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), Bandwidth{};
  return c.as_bandwidth(r);
}
std::optional<Bandwidth> Node::opt_bandwidth(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return std::nullopt;
  return c.as_bandwidth(r);
}
FlopRate Node::req_flop_rate(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), FlopRate{};
  return c.as_flop_rate(r);
}
std::optional<FlopRate> Node::opt_flop_rate(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return std::nullopt;
  return c.as_flop_rate(r);
}
std::optional<double> Node::opt_frequency(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return std::nullopt;
  return checked(c, read_unit(c, [](std::string_view t) { return sim::parse_frequency(t); }), r);
}
sim::SimTime Node::req_time(std::string_view key, Range r) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), sim::SimTime{};
  return c.as_time(r);
}
sim::SimTime Node::opt_time(std::string_view key, sim::SimTime dflt, Range r) const {
  Node c = child(key);
  return c.defined() ? c.as_time(r) : dflt;
}
std::string Node::req_choice(std::string_view key, const std::vector<std::string>& choices) const {
  Node c = child(key);
  if (!c.defined()) return missing(*this, key), std::string();
  return c.as_choice(choices);
}
std::string Node::opt_choice(std::string_view key, const std::vector<std::string>& choices, std::string dflt) const {
  Node c = child(key);
  return c.defined() ? c.as_choice(choices) : dflt;
}

// ---------------------------------------------------------------------------------------------
// Document
// ---------------------------------------------------------------------------------------------

Document::Document()
    : root_(std::make_unique<YAML::Node>()), overrides_(std::make_shared<std::map<std::string, OverrideOrigin>>()) {}
Document::Document(Document&&) noexcept = default;
Document& Document::operator=(Document&&) noexcept = default;
Document::~Document() = default;

namespace {

/// Aliases may add at most this many nodes to a document (an alias counts as the size of the
/// node it copies), so "billion laughs" documents are refused before anything walks them.
constexpr std::size_t kMaxAliasNodes = 1'000'000;

[[noreturn]] void fail_at(const std::string& file, const YAML::Mark& m, std::string key, std::string message) {
  throw ConfigError({Diagnostic{Location{file, m.line + 1, m.column + 1}, std::move(key), std::move(message)}});
}

/// A pass over the parser's events before the tree is built: rejects an alias inside the node it
/// names (a cycle: yaml-cpp would build a self-containing node that every walk follows forever),
/// alias expansion beyond kMaxAliasNodes, and a second document (yaml-cpp's Load reads the first
/// one only, so the rest would be ignored silently).
class StructureCheck : public YAML::EventHandler {
 public:
  StructureCheck(std::string file, const std::string& text) : file_(std::move(file)), text_(text) {}

  void OnDocumentStart(const YAML::Mark& m) override {
    if (++documents_ > 1)
      fail_at(file_, m, "",
              "a second YAML document starts here (after '---'); a moesim input file holds exactly one document");
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t a) override { leaf(m, a); }
  void OnScalar(const YAML::Mark& m, const std::string& tag, YAML::anchor_t a, const std::string&) override {
    if (tag == "!") check_quote(m);  // "!" marks a non-plain scalar: quoted or block
    leaf(m, a);
  }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t a) override {
    for (const Open& o : open_)
      if (o.anchor == a)
        fail_at(file_, m, "",
                fmt::format("alias '*{}' refers to the node that contains it (a recursive alias)", name_of(a)));
    const auto it = size_.find(a);
    const std::size_t n = it == size_.end() ? 1 : it->second;
    aliased_ += n;
    if (aliased_ > kMaxAliasNodes)
      fail_at(file_, m, "",
              fmt::format("aliases expand this document by more than {} nodes (alias '*{}' copies {} nodes); "
                          "write the values out or use fewer nested aliases",
                          kMaxAliasNodes, name_of(a), n));
    count(m, n);
  }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t a, YAML::EmitterStyle::value) override {
    open(m, a);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t a, YAML::EmitterStyle::value) override {
    open(m, a);
  }
  void OnMapEnd() override { close(); }
  void OnAnchor(const YAML::Mark&, const std::string& name) override { pending_name_ = name; }

 private:
  struct Open {
    YAML::anchor_t anchor;
    std::size_t start;  // nodes counted before this one
  };
  /// yaml-cpp takes a quoted scalar without its closing quote to the end of the file, silently
  /// swallowing every key after it; such a scalar is a syntax error here.
  void check_quote(const YAML::Mark& m) {
    if (m.pos < 0) return;
    std::size_t i = static_cast<std::size_t>(m.pos);
    const std::size_t n = text_.size();
    while (i < n && (text_[i] == '&' || text_[i] == '!')) {  // skip an anchor or a tag
      while (i < n && text_[i] != ' ' && text_[i] != '\t' && text_[i] != '\n') ++i;
      while (i < n && (text_[i] == ' ' || text_[i] == '\t')) ++i;
    }
    if (i >= n || (text_[i] != '"' && text_[i] != '\'')) return;
    const char q = text_[i];
    for (++i; i < n; ++i) {
      if (q == '"' && text_[i] == '\\') {
        ++i;
        continue;
      }
      if (text_[i] != q) continue;
      if (q == '\'' && i + 1 < n && text_[i + 1] == '\'') {  // '' is a quote inside '...'
        ++i;
        continue;
      }
      return;
    }
    fail_at(file_, m, "",
            fmt::format("YAML syntax error: unterminated quoted string (no closing {} before the end)", q));
  }
  void named(YAML::anchor_t a) {
    if (a != YAML::NullAnchor) names_[a] = pending_name_;
    pending_name_.clear();
  }
  std::string name_of(YAML::anchor_t a) const {
    const auto it = names_.find(a);
    return it == names_.end() ? std::string("?") : it->second;
  }
  void count(const YAML::Mark&, std::size_t n) { nodes_ += n; }
  void leaf(const YAML::Mark& m, YAML::anchor_t a) {
    named(a);
    count(m, 1);
    if (a != YAML::NullAnchor) size_[a] = 1;
  }
  void open(const YAML::Mark& m, YAML::anchor_t a) {
    named(a);
    open_.push_back(Open{a, nodes_});
    count(m, 1);
  }
  void close() {
    const Open o = open_.back();
    open_.pop_back();
    if (o.anchor != YAML::NullAnchor) size_[o.anchor] = nodes_ - o.start;
  }

  std::string file_;
  const std::string& text_;
  int documents_ = 0;
  std::size_t nodes_ = 0;    // nodes of the expanded document so far
  std::size_t aliased_ = 0;  // of those, nodes added by aliases
  std::vector<Open> open_;
  std::map<YAML::anchor_t, std::size_t> size_;
  std::map<YAML::anchor_t, std::string> names_;
  std::string pending_name_;
};

YAML::Mark mark_or_start(const YAML::Mark& m) { return m.line < 0 ? YAML::Mark() : m; }

/// Parses one YAML document from `text` with the structure checks above. Syntax errors become a
/// located ConfigError.
/// Texts that passed the structure check lately: a sweep re-reads its file and its base for
/// every point, and the check is a second parse. Exact comparison, never a hash.
bool recently_checked(const std::string& text, bool add) {
  static std::mutex mu;
  static std::deque<std::string> recent;
  const std::lock_guard<std::mutex> lock(mu);
  for (const auto& t : recent)
    if (t == text) return true;
  if (add && text.size() <= (std::size_t{1} << 20)) {
    recent.push_front(text);
    if (recent.size() > 8) recent.pop_back();
  }
  return false;
}

YAML::Node load_checked(const std::string& text, const std::string& name) {
  try {
    if (!recently_checked(text, false)) {
      std::istringstream in(text);
      YAML::Parser parser(in);
      StructureCheck check(name, text);
      while (parser.HandleNextDocument(check)) {
      }
      recently_checked(text, true);
    }
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail_at(name, mark_or_start(e.mark), "", "YAML syntax error: " + e.msg);
  }
}

/// A key as written, for paths in messages.
std::string key_text(const YAML::Node& k) {
  if (k.IsScalar()) return k.Scalar();
  if (k.IsNull()) return "~";
  return "?";
}

// yaml-cpp keeps the last of duplicate keys silently; a user's setting would be lost, so
// duplicates are errors. Keys must be plain names: a null key, or a list or mapping used as a
// key (`? [a, b]: 1`), is never a moesim setting and would otherwise be skipped silently.
void find_duplicates(const YAML::Node& n, const std::string& file, const std::string& path,
                     std::vector<Diagnostic>& out) {
  if (n.IsMap()) {
    std::set<std::string> seen;
    for (const auto& kv : n) {
      const std::string key = key_text(kv.first);
      const std::string p = path.empty() ? key : path + "." + key;
      const YAML::Mark m = kv.first.Mark();
      const Location at{file, m.line + 1, m.column + 1};
      if (kv.first.IsNull()) {
        out.push_back(Diagnostic{at, p, "a null key: keys must be plain names"});
      } else if (!kv.first.IsScalar()) {
        out.push_back(Diagnostic{
            at, p, fmt::format("a key must be a plain name, not {}", kv.first.IsSequence() ? "a list" : "a mapping")});
      } else if (!seen.insert(key).second) {
        out.push_back(Diagnostic{at, p, "duplicate key"});
      }
      find_duplicates(kv.second, file, p, out);
    }
  } else if (n.IsSequence()) {
    std::size_t i = 0;
    for (const auto& v : n) find_duplicates(v, file, fmt::format("{}[{}]", path, i++), out);
  }
}

YAML::Node load_document(const std::string& text, const std::string& name) {
  YAML::Node root = load_checked(text, name);
  std::vector<Diagnostic> dups;
  find_duplicates(root, name, "", dups);
  if (!dups.empty()) throw ConfigError(dups);
  return root;
}

}  // namespace

Document Document::load_file(const std::string& path) {
  Document d;
  d.file_ = path;
  *d.root_ = load_document(read_input_file(path, kMaxYamlBytes, ""), path);
  return d;
}

Document Document::load_string(const std::string& text, const std::string& name) {
  Document d;
  d.file_ = name;
  *d.root_ = load_document(text, name);
  return d;
}

namespace {
struct Segment {
  std::string key;
  bool is_index = false;
  std::size_t index = 0;
};

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// All-digit index that fits a size_t; an index too large for any list is a malformed path, not
// an exception (libFuzzer: "a.77777777777777777777=1" reached std::stoul's out_of_range).
bool parse_index(std::string_view s, std::size_t& out) {
  if (!all_digits(s)) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

// "a.b[0].c" or "a.b.0.c" -> segments; returns false on malformed paths.
bool split_path(std::string_view path, std::vector<Segment>& out) {
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('.', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (part.empty()) return false;
    // split trailing [n] indices
    const std::size_t br = part.find('[');
    std::string_view head = br == std::string_view::npos ? part : part.substr(0, br);
    if (!head.empty()) {
      std::size_t index = 0;
      if (all_digits(head)) {
        if (!parse_index(head, index)) return false;
        out.push_back(Segment{std::string(head), true, index});
      } else {
        out.push_back(Segment{std::string(head), false, 0});
      }
    } else if (br != 0) {
      return false;
    }
    std::size_t k = br;
    while (k != std::string_view::npos && k < part.size()) {
      if (part[k] != '[') return false;
      const std::size_t close = part.find(']', k);
      if (close == std::string_view::npos) return false;
      std::string_view num = part.substr(k + 1, close - k - 1);
      std::size_t index = 0;
      if (!parse_index(num, index)) return false;
      out.push_back(Segment{std::string(num), true, index});
      k = close + 1;
    }
    i = j + 1;
    if (j == path.size()) break;
  }
  return !out.empty();
}
}  // namespace

void Document::set(std::string_view path, std::string_view yaml_value) {
  const std::string assignment = fmt::format("{}={}", path, yaml_value);
  const Location where{"--set " + assignment, 0, 0};
  YAML::Node value;
  try {
    value = load_document(std::string(yaml_value), where.file);
  } catch (const ConfigError& e) {
    std::vector<Segment> segs;
    if (!split_path(path, segs))
      throw ConfigError({Diagnostic{where, std::string(path),
                                    "malformed key path (expected names separated by '.', e.g. routing.alpha)"}});
    std::string why = e.diagnostics().front().message;
    if (why.rfind("YAML syntax error: ", 0) == 0) why = "the value is not valid YAML: " + why.substr(19);
    throw ConfigError({Diagnostic{where, std::string(path), why}});
  }
  set_node(path, value, OverrideOrigin{assignment, nullptr, std::nullopt}, where);
}

void Document::set(std::string_view path, const Node& value, std::optional<Location> path_at) {
  if (!value.defined()) throw std::logic_error("Document::set: undefined value node for " + std::string(path));
  const std::string file = value.location().file;
  set_node(path, value.impl_->node,
           OverrideOrigin{fmt::format("{}=<{}>", path, file), std::make_shared<const std::string>(file), path_at},
           value.location());
}

void Document::set_node(std::string_view path, const YAML::Node& value, OverrideOrigin origin, const Location& where) {
  const auto bad = [&](std::string msg) { return ConfigError({Diagnostic{where, std::string(path), std::move(msg)}}); };
  std::vector<Segment> segs;
  if (!split_path(path, segs)) throw bad("malformed key path (expected names separated by '.', e.g. routing.alpha)");
  if (!root_->IsDefined() || root_->IsNull()) *root_ = YAML::Node(YAML::NodeType::Map);

  YAML::Node cur = *root_;
  std::string canon;
  for (std::size_t s = 0; s < segs.size(); ++s) {
    const Segment& seg = segs[s];
    const bool last = s + 1 == segs.size();
    YAML::Node next;
    if (cur.IsSequence() && seg.is_index) {
      if (seg.index >= cur.size())
        throw bad(fmt::format("index {} is out of range: '{}' has {} element(s)", seg.index, canon, cur.size()));
      canon += fmt::format("[{}]", seg.index);
      if (last) {
        cur[seg.index] = value;
        break;
      }
      next.reset(cur[seg.index]);
    } else {
      if (cur.IsNull()) cur = YAML::Node(YAML::NodeType::Map);
      if (!cur.IsMap())
        throw bad(
            fmt::format("'{}' is not a mapping, so it has no key '{}'", canon.empty() ? "<root>" : canon, seg.key));
      canon += canon.empty() ? seg.key : "." + seg.key;
      if (last) {
        cur[seg.key] = value;
        break;
      }
      if (!cur[seg.key]) cur[seg.key] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[seg.key]);
    }
    cur.reset(next);
  }
  // Later overrides of the same path replace earlier ones; descendants are replaced too.
  for (auto it = overrides_->begin(); it != overrides_->end();)
    it = path_under(it->first, canon) ? overrides_->erase(it) : std::next(it);
  (*overrides_)[canon] = std::move(origin);
}

void Document::apply_override(std::string_view assignment) {
  const std::size_t eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0)
    throw ConfigError({Diagnostic{Location{"--set " + std::string(assignment), 0, 0}, "",
                                  "expected key.path=value (for example routing.capacity_factor=1.5)"}});
  set(assignment.substr(0, eq), assignment.substr(eq + 1));
}

Node Document::root(Diagnostics& diags) const {
  Node n;
  n.diags_ = &diags;
  n.impl_->node = *root_;
  n.impl_->present = root_->IsDefined() && !root_->IsNull();
  n.impl_->file = std::make_shared<const std::string>(file_);
  n.impl_->overrides = overrides_;
  n.impl_->parent_loc = Location{file_, 1, 1};
  if (root_->IsMap()) n.impl_->known = std::make_shared<std::set<std::string>>();
  return n;
}

std::string Document::dump() const {
  YAML::Emitter out;
  out << *root_;
  return std::string(out.c_str()) + "\n";
}

Document Document::clone() const {
  Document d;
  d.file_ = file_;
  *d.root_ = YAML::Clone(*root_);
  *d.overrides_ = *overrides_;
  return d;
}

}  // namespace moesim::config
