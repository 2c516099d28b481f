// comm_selftest: run under mpirun (or alone: one rank); checks every collective of Comm against
// values each rank can compute by itself, on awkward counts (zeros, uneven blocks), in the
// world and in sub-groups, and ZeRO-3's folding of a LoRA run's gradients packed (as a GPU holds
// them) against the same at shard offsets, and its gathers of units whose frozen matmul weights
// are held in bf16 only, and the export that gathers a unit at a time, and generation over the
// shards, on every mesh of the ranks. Prints "comm ok" from
// rank 0 and exits 0, or names the first mismatch and exits 1. Driven by tests/dist/comm_test.cc.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/costly_zeros.h"
#include "util/export_model.h"
#include "xtuner/core/file_util.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/expert_parallel.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/shard_io.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/generate.h"
#include "xtuner/plan/frozen_bf16.h"

namespace xt {
namespace {

int failures = 0;

void Expect(bool ok, const Comm& c, const std::string& what) {
  if (!ok && failures++ < 5) std::fprintf(stderr, "rank %d: %s mismatch\n", c.rank(), what.c_str());
}

// Rank r's block for rank q has (r + 2q) % 3 elements (some zero), valued 1000r + 10q + i.
int64_t Count(int r, int q) { return (r + 2 * q) % 3; }
float Value(int r, int q, int64_t i) { return float(1000 * r + 10 * q + i); }

void CheckGroup(Comm& c, const std::string& name) {
  const int n = c.size(), me = c.rank();
  {  // all-reduce
    std::vector<double> d = {double(me), 1.0, -double(me) * 0.5};
    c.AllReduceSum(d.data(), 3);
    Expect(d[0] == n * (n - 1) / 2.0 && d[1] == n, c, name + " AllReduceSum(double)");
    std::vector<float> f(5, float(me + 1));
    c.AllReduceSum(f.data(), 5);
    Expect(f[4] == n * (n + 1) / 2.0f, c, name + " AllReduceSum(float)");
    double m = me;
    c.AllReduceMax(&m, 1);
    Expect(m == n - 1, c, name + " AllReduceMax");
  }
  {  // all-gather with uneven counts (rank r sends r elements; rank 0 none)
    std::vector<int64_t> counts(n);
    int64_t total = 0;
    for (int r = 0; r < n; ++r) total += counts[r] = r;
    std::vector<float> send(me), recv(total, -1);
    for (int i = 0; i < me; ++i) send[i] = Value(me, 0, i);
    c.AllGather(recv.data(), send.data(), counts);
    bool ok = true;
    for (int r = 0, at = 0; r < n; ++r)
      for (int i = 0; i < r; ++i) ok &= recv[at++] == Value(r, 0, i);
    Expect(ok, c, name + " AllGather");
  }
  {  // all-gather in place: each rank's block already in its place in recv
    std::vector<int64_t> counts(n);
    int64_t total = 0, mine = 0;
    for (int r = 0; r < n; ++r) {
      if (r == me) mine = total;
      total += counts[r] = r + 2;
    }
    std::vector<float> recv(total, -1);
    for (int i = 0; i < me + 2; ++i) recv[mine + i] = Value(me, 1, i);
    c.AllGather(recv.data(), recv.data() + mine, counts);
    bool ok = true;
    for (int r = 0, at = 0; r < n; ++r)
      for (int i = 0; i < r + 2; ++i) ok &= recv[at++] == Value(r, 1, i);
    Expect(ok, c, name + " AllGather in place");
  }
  {  // gather to the last rank
    std::vector<int64_t> counts(n);
    int64_t total = 0;
    for (int r = 0; r < n; ++r) total += counts[r] = (r + 1) % 3;
    std::vector<float> send(counts[me]), recv(total, -1);
    for (int64_t i = 0; i < counts[me]; ++i) send[i] = Value(me, 1, i);
    c.Gather(recv.data(), send.data(), counts, n - 1);
    bool ok = true;
    if (me == n - 1)
      for (int r = 0, at = 0; r < n; ++r)
        for (int64_t i = 0; i < counts[r]; ++i) ok &= recv[at++] == Value(r, 1, i);
    Expect(ok, c, name + " Gather");
  }
  {  // reduce-scatter: block q has q + 1 elements; rank r contributes r + 1 to each
    std::vector<int64_t> counts(n);
    int64_t total = 0;
    for (int q = 0; q < n; ++q) total += counts[q] = q + 1;
    std::vector<float> send(total, float(me + 1)), recv(me + 1, -1);
    c.ReduceScatterSum(recv.data(), send.data(), counts);
    bool ok = true;
    for (float v : recv) ok &= v == n * (n + 1) / 2.0f;
    Expect(ok, c, name + " ReduceScatterSum");
  }
  {  // all-to-all: counts first, then the data
    std::vector<int64_t> send_counts(n), recv_counts(n);
    for (int q = 0; q < n; ++q) send_counts[q] = Count(me, q);
    c.AllToAllCounts(recv_counts.data(), send_counts.data(), 1);
    bool ok = true;
    for (int r = 0; r < n; ++r) ok &= recv_counts[r] == Count(r, me);
    Expect(ok, c, name + " AllToAllCounts");
    std::vector<float> send, recv;
    for (int q = 0; q < n; ++q)
      for (int64_t i = 0; i < send_counts[q]; ++i) send.push_back(Value(me, q, i));
    int64_t total = 0;
    for (int64_t x : recv_counts) total += x;
    recv.assign(total, -1);
    c.AllToAll(recv.data(), recv_counts, send.data(), send_counts);
    ok = true;
    for (int r = 0, at = 0; r < n; ++r)
      for (int64_t i = 0; i < recv_counts[r]; ++i) ok &= recv[at++] == Value(r, me, i);
    Expect(ok, c, name + " AllToAll");
  }
  {  // broadcast from the last rank
    int64_t v = me == n - 1 ? 4242 : 0;
    c.Broadcast(&v, sizeof v, n - 1);
    Expect(v == 4242, c, name + " Broadcast");
  }
  c.Barrier();
}

// Expert exchange: 3 experts per rank; rank r has (e + r) % 3 rows for global expert e (so
// some experts get nothing from some ranks, and, on 1 rank, expert 0 gets nothing at all).
// Row values encode (source rank, expert, i); the experts' "work" negates them.
void CheckExpertExchange(Comm& c) {
  const int n = c.size(), me = c.rank();
  const int64_t El = 3, E = El * n, H = 2;
  std::vector<int32_t> offsets(E + 1, 0);
  std::vector<float> xs;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e + 1] = offsets[e] + int32_t((e + me) % 3);
    for (int64_t i = 0; i < (e + me) % 3; ++i)
      for (int64_t h = 0; h < H; ++h) xs.push_back(float(10000 * me + 100 * e + 10 * i + h));
  }
  EpExchange x = PlanExpertExchange(c, offsets.data(), E);
  std::vector<float> xr(x.num_received() * H);
  ExpertDispatch(c, x, xs.data(), H, xr.data());
  // Grouped by local expert, then by source rank, then in order.
  bool ok = int64_t(x.local_offsets.size()) == El + 1;
  int64_t at = 0;
  for (int64_t j = 0; j < El && ok; ++j) {
    const int64_t e = me * El + j;
    ok &= x.local_offsets[j] == at;
    for (int s = 0; s < n; ++s)
      for (int64_t i = 0; i < (e + s) % 3; ++i, ++at)
        for (int64_t h = 0; h < H; ++h)
          ok &= xr[at * H + h] == float(10000 * s + 100 * e + 10 * i + h);
  }
  ok &= at == x.num_received();
  Expect(ok, c, "ExpertDispatch");
  for (float& v : xr) v = -v;
  std::vector<float> ys(xs.size());
  ExpertCombine(c, x, xr.data(), H, ys.data());
  ok = true;
  for (size_t i = 0; i < xs.size(); ++i) ok &= ys[i] == -xs[i];
  Expect(ok, c, "ExpertCombine");
}

// A tiny Qwen3-MoE (4 experts, untied) with rank-2 adapters on q_proj and o_proj.
Result<ModelConfig> LoraConfig() {
  const nlohmann::json j = {{"model_type", "qwen3_moe"},
                            {"vocab_size", 64},
                            {"hidden_size", 16},
                            {"num_hidden_layers", 2},
                            {"num_attention_heads", 2},
                            {"num_key_value_heads", 1},
                            {"head_dim", 8},
                            {"moe_intermediate_size", 8},
                            {"num_experts", 4},
                            {"num_experts_per_tok", 2},
                            {"tie_word_embeddings", false}};
  Result<ModelConfig> cfg = ModelConfig::FromJson(j, "selftest");
  if (!cfg.ok()) return cfg;
  cfg->lora.rank = 2;
  cfg->lora.alpha = 4;
  cfg->lora.targets = {"q_proj", "o_proj"};
  return cfg;
}

// A LoRA run's gradients on mesh (world, ep): each rank writes the same made-up gradients of
// every unit (its rank in them) into two ShardedParams, one over host memory (gradients at
// shard offsets) and one over CostlyZeros (packed, compact_grads); after GradsDone's
// reduce-scatters the packed ones are the other's trainable ranges, bit for bit.
void CheckPackedLoraGradients(Comm& world, int ep) {
  const std::string what = "packed LoRA gradients (ep " + std::to_string(ep) + ")";
  Result<ModelConfig> cfg = LoraConfig();
  Expect(cfg.ok(), world, what + ": config");
  if (!cfg.ok()) return;
  Result<Mesh> mesh = MakeMesh(world.size(), world.rank(), ep, *cfg);
  if (!mesh.ok()) return;  // (a mesh these ranks cannot make: nothing to check)
  std::unique_ptr<Comm> dp = world.Split(mesh->ep_rank, mesh->dp_rank);
  testing::CostlyZeros costly;
  ShardedParams plain(*cfg, *mesh, &world, dp.get());
  ShardedParams packed(*cfg, *mesh, &world, dp.get(), &costly);
  Expect(!plain.compact_grads() && packed.compact_grads(), world, what + ": compact_grads");
  plain.ZeroGrads();
  packed.ZeroGrads();
  const ParamLayout& layout = plain.layout();
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u)
    for (ShardedParams* store : {&plain, &packed}) {
      float* g = store->Grads(u);  // what of u trains, zeroed
      for (int64_t i = 0; g && i < layout.trainable(u).size(); ++i)
        g[i] += float(world.rank() + 1) * 0.25f + float(u) + float(i % 7) * 0.125f;
      store->GradsDone(u);
    }
  const float* a = plain.grads();
  const float* b = packed.grads();
  bool ok = packed.trainable_floats() == plain.trainable_floats();
  int64_t at = 0;
  for (const auto& [shard, n] : plain.trainable_ranges())
    for (int64_t i = 0; i < n && ok; ++i) ok = a[shard + i] == b[at++] && a[shard + i] != 0.0f;
  Expect(ok && at == packed.trainable_floats(), world, what);
}

// A LoRA run's frozen matmul weights held in bf16 only on mesh (world, ep): a ShardedParams over
// CostlyZeros (bf16 buffers as a GPU's) with them in bf16 gathers every unit as one holding
// them in fp32, bit for bit (the values are bf16 numbers), and its fp32 and bf16 ranges tile
// the shard.
void CheckBf16OnlyGathers(Comm& world, int ep) {
  const std::string what = "bf16-only gathers (ep " + std::to_string(ep) + ")";
  Result<ModelConfig> cfg = LoraConfig();
  Expect(cfg.ok(), world, what + ": config");
  if (!cfg.ok()) return;
  Result<Mesh> mesh = MakeMesh(world.size(), world.rank(), ep, *cfg);
  if (!mesh.ok()) return;
  std::unique_ptr<Comm> dp = world.Split(mesh->ep_rank, mesh->dp_rank);
  testing::CostlyZeros costly;
  ShardedParams plain(*cfg, *mesh, &world, dp.get());
  const SlabRanges bf16_only = Bf16OnlyRanges(plain.layout());
  ShardedParams halves(*cfg, *mesh, &world, dp.get(), &costly, bf16_only);
  Expect(!bf16_only.empty() && !halves.bf16_ranges().empty(), world, what + ": ranges");
  // Every element a bf16 number (8 significant bits) from its place in the whole model.
  float* p = plain.params();
  for (const OwnedRange& r : plain.owned())
    for (int64_t i = 0; i < r.size; ++i) p[r.shard + i] = float((r.global + i) % 255 - 127) * 0.25f;
  int64_t tiled = 0;
  for (const auto& [at, n] : halves.fp32_ranges()) {
    std::copy(p + at, p + at + n, halves.params() + at);
    tiled += n;
  }
  uint16_t* held16 = halves.params16();  // (the bf16 ranges one after another)
  for (const auto& [at, n] : halves.bf16_ranges()) {
    for (int64_t i = at; i < at + n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + i, 4);
      *held16++ = uint16_t(bits >> 16);
    }
    tiled += n;
  }
  Expect(tiled == plain.shard_size(), world, what + ": the ranges tile the shard");
  Expect(costly.bf16_floats() == held16 - halves.params16(), world,
         what + ": bf16 held for the bf16 ranges alone");
  bool ok = true;
  const ParamLayout& layout = plain.layout();
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
    const float* a = plain.Acquire(u);
    const float* b = halves.Acquire(u);
    ok = ok && std::memcmp(a, b, size_t(layout.units()[u].size()) * 4) == 0;
    plain.Release(u);
    halves.Release(u);
  }
  Expect(ok, world, what);
}

// The export tests' model (util/export_model.h); a LoRA run: q_proj and o_proj.
Result<ModelConfig> ExportConfig(bool lora) {
  Result<ModelConfig> cfg = ModelConfig::FromJson(testing::ExportModelJson(), "selftest");
  if (!cfg.ok() || !lora) return cfg;
  cfg->lora.rank = 4;
  cfg->lora.alpha = 8;
  cfg->lora.targets = {"q_proj", "o_proj"};
  return cfg;
}

// Every file of directory a equals b's, byte for byte, and there are some.
bool SameFiles(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(a)) names.push_back(e.path().filename().string());
  const auto count = std::distance(fs::directory_iterator(b), fs::directory_iterator());
  bool same = !names.empty() && count == int64_t(names.size());
  for (const std::string& n : names) {
    Result<std::string> x = ReadFileToString(a + "/" + n), y = ReadFileToString(b + "/" + n);
    same = same && x.ok() && y.ok() && *x == *y;
  }
  return same;
}

// The export model (ExportConfig) sharded on mesh (world, ep), each parameter set from its
// global index (in [-scale, scale)), and the whole model gathered on rank 0 (null on the
// others). Null where the mesh does not fit the ranks.
struct ShardedModel {
  ModelConfig cfg;
  Mesh mesh;
  std::unique_ptr<Comm> dp, ep;
  std::unique_ptr<ShardedParams> store;
  std::unique_ptr<Transformer> whole;
};
std::unique_ptr<ShardedModel> MakeShardedModel(Comm& world, int ep, bool lora, float scale,
                                               const std::string& what) {
  Result<ModelConfig> cfg = ExportConfig(lora);
  Expect(cfg.ok(), world, what + ": config");
  if (!cfg.ok()) return nullptr;
  Result<Mesh> mesh = MakeMesh(world.size(), world.rank(), ep, *cfg);
  if (!mesh.ok()) return nullptr;
  auto m = std::make_unique<ShardedModel>();
  m->cfg = *cfg;
  m->mesh = *mesh;
  m->dp = world.Split(mesh->ep_rank, mesh->dp_rank);
  m->ep = world.Split(mesh->dp_rank, mesh->ep_rank);
  m->store = std::make_unique<ShardedParams>(m->cfg, m->mesh, &world, m->dp.get());
  for (const OwnedRange& r : m->store->owned())
    for (int64_t i = 0; i < r.size; ++i)
      m->store->params()[r.shard + i] =
          (float((r.global + i) * 7919 % 1999 + 1) / 1999.0f - 0.5f) * 2 * scale;
  m->whole = GatherWholeModel(world, m->cfg, m->mesh, m->store->params(), m->store->shard_size());
  return m;
}

// The export that gathers a unit at a time (ShardedExportParams) on mesh (world, ep): on rank 0
// each unit it loads is the whole model's (GatherWholeModel's); once every unit is loaded it
// holds about one unit's pages, not the model's, and a LoRA run's adapters whole; the files
// SaveHfModelFrom writes from it (fp32 and bf16, in shards of 1 MB) are those it writes from the
// whole model.
void CheckUnitExport(Comm& world, int ep, bool lora) {
  const std::string what =
      std::string("unit export (ep ") + std::to_string(ep) + (lora ? ", LoRA)" : ")");
  const std::unique_ptr<ShardedModel> m = MakeShardedModel(world, ep, lora, 0.5f, what);
  if (!m) return;
  const ModelConfig& cfg = m->cfg;
  const Mesh& mesh = m->mesh;
  ShardedParams& store = *m->store;
  const Transformer* whole = m->whole.get();
  const ParamLayout layout(cfg);
  {
    ShardedExportParams ex(world, cfg, mesh, store.params(), store.shard_size());
    if (world.rank() != 0) {
      ex.Serve();
    } else {
      const float* want = whole->params().f32();
      bool same = true;
      int64_t largest = 0, kept = 0;
      for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
        Expect(ex.Load(u).ok(), world, what + ": load");
        const ParamUnit& unit = layout.units()[u];
        same = same &&
               std::memcmp(ex.slab() + unit.begin, want + unit.begin, size_t(unit.size()) * 4) == 0;
        largest = std::max(largest, unit.size());
      }
      Expect(same, world, what + ": the units");
      bool adapters = true;
      for (int64_t u = 0; lora && u < int64_t(layout.units().size()); ++u) {
        const ParamUnit& t = layout.trainable(u);
        adapters =
            adapters && std::memcmp(ex.slab() + t.begin, want + t.begin, size_t(t.size()) * 4) == 0;
        kept += t.size();
      }
      Expect(adapters && (kept > 0) == lora, world, what + ": the adapters kept");
      const size_t page = size_t(sysconf(_SC_PAGESIZE)), bytes = size_t(layout.total()) * 4;
      std::vector<unsigned char> in((bytes + page - 1) / page);
      Expect(mincore(const_cast<float*>(ex.slab()), bytes, in.data()) == 0, world, what);
      int64_t resident = 0;
      for (unsigned char c : in) resident += c & 1;
      const int64_t bound = 4 * (largest + kept) + int64_t(page) * 2 * (layout.units().size() + 1);
      Expect(ex.holds_all() || (resident * int64_t(page) <= bound && 2 * bound < int64_t(bytes)),
             world, what + ": resident pages");  // (one rank: the slab is the shard)
      ex.Done();
    }
  }
  char tmp[] = "/tmp/xtuner_test_unit_export_XXXXXX";
  const bool root = world.rank() == 0;
  Expect(!root || mkdtemp(tmp) != nullptr, world, what + ": mkdtemp");
  for (ExportDType dtype : {ExportDType::kF32, ExportDType::kBf16}) {
    ShardedExportParams ex(world, cfg, mesh, store.params(), store.shard_size());
    if (!root) {
      ex.Serve();
      continue;
    }
    const std::string a = std::string(tmp) + "/units", b = std::string(tmp) + "/whole";
    SlabExportParams all(whole->params().f32());
    Expect(SaveHfModelFrom(cfg, layout, ex, a, dtype, 1 << 20).ok(), world, what + ": save");
    ex.Done();
    Expect(SaveHfModelFrom(cfg, layout, all, b, dtype, 1 << 20).ok(), world, what + ": save");
    Expect(SameFiles(a, b) && std::filesystem::exists(a + "/model.safetensors.index.json"), world,
           what + ": the files");
    std::filesystem::remove_all(a);
    std::filesystem::remove_all(b);
  }
  if (root) std::filesystem::remove_all(tmp);
}

// GenerateMany over a model sharded on mesh (world, ep), from every rank, gives each prompt's
// Generate on the whole model. 5 prompts in batches of 2: on 2 to 4 ranks some ranks have none
// left while others decode, and keep step; one prompt: some ranks have none at all.
void CheckShardedGenerate(Comm& world, int ep, bool lora) {
  const std::string what =
      std::string("sharded generate (ep ") + std::to_string(ep) + (lora ? ", LoRA)" : ")");
  const std::unique_ptr<ShardedModel> m = MakeShardedModel(world, ep, lora, 0.25f, what);
  if (!m) return;
  Transformer* whole = m->whole.get();
  Transformer sharded(m->cfg, m->store.get(), m->mesh.first_expert(m->cfg),
                      m->mesh.experts_per_rank(m->cfg), m->ep.get());
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 2, 3}, {7}, {40, 41, 42, 43, 44, 45}, {9, 9}, {100, 3}};
  GenerateOptions o;
  o.max_new_tokens = 4;
  int32_t stop = 0;  // ends one prompt at once (the whole model is rank 0's)
  if (whole) stop = Generate(*whole, prompts[3], o)->front();
  world.Broadcast(&stop, sizeof stop, 0);
  o.stop_ids = {stop};
  Result<std::vector<std::vector<int32_t>>> got = GenerateMany(sharded, world, prompts, o, 2);
  Expect(got.ok() && got->size() == prompts.size(), world, what);
  if (!got.ok() || got->size() != prompts.size()) return;
  bool same = true;
  double digest = 0;  // of the outputs, the same on every rank
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (size_t t = 0; t < (*got)[i].size(); ++t) digest += double((*got)[i][t]) * (7 * i + t + 1);
    digest += 1000.0 * double((*got)[i].size());
    if (!whole) continue;
    Result<std::vector<int32_t>> want = Generate(*whole, prompts[i], o);
    same = same && want.ok() && *want == (*got)[i] && !want->empty();
  }
  Expect(same, world, what + ": the outputs");
  double most[2] = {digest, -digest};
  world.AllReduceMax(most, 2);
  Expect(most[0] == digest && -most[1] == digest, world, what + ": the outputs on every rank");
  // One prompt (ranks with none at all), and no tokens to generate.
  got = GenerateMany(sharded, world, {prompts[2]}, o, 2);
  Expect(got.ok() && got->size() == 1 && (!whole || *Generate(*whole, prompts[2], o) == got->at(0)),
         world, what + ": one prompt");
  o.max_new_tokens = 0;
  got = GenerateMany(sharded, world, prompts, o, 2);
  Expect(got.ok() && *got == std::vector<std::vector<int32_t>>(prompts.size()), world,
         what + ": no tokens");
}

int Main() {
  std::unique_ptr<Comm> world = MakeWorldComm();
  CheckGroup(*world, "world");
  // Sub-groups: even and odd ranks, ranked in reverse.
  std::unique_ptr<Comm> half = world->Split(world->rank() % 2, -world->rank());
  const int expected = (world->size() + (world->rank() % 2 == 0 ? 1 : 0)) / 2;
  Expect(half->size() == expected, *world, "Split size");
  CheckGroup(*half, "split");
  CheckExpertExchange(*world);
  for (int ep : {1, 2, 4}) CheckPackedLoraGradients(*world, ep);
  if (world->size() > 1)  // (one rank holds every unit whole: the model keeps the bf16 copies)
    for (int ep : {1, 2}) CheckBf16OnlyGathers(*world, ep);
  for (int ep : {1, 2})
    for (bool lora : {false, true}) {
      CheckUnitExport(*world, ep, lora);
      CheckShardedGenerate(*world, ep, lora);
    }
  double bad = failures;
  world->AllReduceSum(&bad, 1);
  if (world->rank() == 0 && bad == 0) std::printf("comm ok on %d ranks\n", world->size());
  return bad == 0 ? 0 : 1;
}

}  // namespace
}  // namespace xt

int main() { return xt::Main(); }
