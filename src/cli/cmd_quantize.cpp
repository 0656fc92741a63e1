// `moxin quantize`: writes a copy of a checkpoint whose decoder linears (q/k/v/o/gate/up/down,
// lm_head) are MLX-style affine quantized or FP8 E4M3 with per-channel scales (docs/model.md
// section 5) and every other tensor is copied as stored. Shards of at most ~2 GB are written one at a time (plus an index), so memory stays
// near one shard however large the model; the result loads with `--model OUT` directly.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "cli/progress_bar.hpp"
#include "hub/resolve_model.hpp"
#include "core/check.hpp"
#include "core/progress_task.hpp"
#include "core/thread_pool.hpp"
#include "io/checkpoint.hpp"
#include "io/quant_group_sizes.hpp"
#include "io/safetensors_writer.hpp"
#include "quant/fp8_quant.hpp"
#include "quant/quantized_weights.hpp"

namespace moxin::cli {
namespace {

namespace fs = std::filesystem;

constexpr size_t kShardBytes = size_t{2} << 30;

struct QuantizeArgs {
  std::string model_dir;
  std::string out_dir;
  std::string bits = "8";  // "8", "4" or "fp8"
  int group_size = 64;

  bool fp8() const { return bits == "fp8"; }
  int affine_bits() const { return fp8() ? 0 : std::stoi(bits); }
  int threads = 0;
  std::string rounding = "mlx";
  bool quiet = false;
};

// One tensor of the input and the bytes it becomes in the output.
struct Planned {
  const TensorInfo* tensor;
  bool quantize;
  size_t out_bytes;
};

size_t quantized_bytes(const TensorInfo& t, const QuantizeArgs& a) {
  const size_t rows = static_cast<size_t>(t.shape[0]), cols = static_cast<size_t>(t.shape[1]);
  if (a.fp8()) return rows * cols + rows * sizeof(float);
  const size_t bits = static_cast<size_t>(a.affine_bits()), group_size = static_cast<size_t>(a.group_size);
  return rows * cols * bits / 8 + 2 * rows * (cols / group_size) * dtype_size(t.dtype);
}

// What config.json "quantization" and quantize_config.json record (model_config.hpp reads it).
nlohmann::ordered_json quantization_json(const QuantizeArgs& a) {
  if (a.fp8()) return {{"quant_method", "fp8"}, {"weight_scale", "per_channel"}};
  return {{"group_size", a.group_size}, {"bits", a.affine_bits()}};
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

void write_json(const fs::path& path, const nlohmann::ordered_json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  out.flush();
  MOXIN_CHECK(out.good(), "[quantize] cannot write ", path.string());
}

// Copies config.json with "quantization" set, writes quantize_config.json, and copies the
// other small files (tokenizer, generation config, ...) but not the old weights or index.
void write_side_files(const QuantizeArgs& a) {
  for (const auto& entry : fs::directory_iterator(a.model_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || entry.path().extension() == ".safetensors" ||
        name == "model.safetensors.index.json" || name == "quantize_config.json" || name == "config.json")
      continue;
    fs::copy_file(entry.path(), fs::path(a.out_dir) / name, fs::copy_options::overwrite_existing);
  }
  std::ifstream in(fs::path(a.model_dir) / "config.json");
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(in);
  config["quantization"] = quantization_json(a);
  write_json(fs::path(a.out_dir) / "config.json", config);
  write_json(fs::path(a.out_dir) / "quantize_config.json", quantization_json(a));
}

void run(const QuantizeArgs& a) {
  if (!a.fp8()) check_quant_format(a.affine_bits(), a.group_size, "moxin quantize");
  MOXIN_CHECK(fs::weakly_canonical(a.model_dir) != fs::weakly_canonical(a.out_dir),
              "[quantize] --output must differ from --model (", a.model_dir, ")");
  if (fs::exists(a.out_dir))
    for (const auto& entry : fs::directory_iterator(a.out_dir))
      MOXIN_CHECK(entry.path().extension() != ".safetensors", "[quantize] ", a.out_dir,
                  " already holds safetensors files (", entry.path().filename().string(),
                  "); choose an empty or new --output directory");
  const Checkpoint ck = load_checkpoint(a.model_dir);
  std::set<std::string> targets;
  for (const LinearWeight* w : quantizable_linears(ck.decoder)) {
    MOXIN_CHECK(w->bits == 0 && !w->is_fp8(), "[quantize] ", a.model_dir, " is already quantized ('",
                w->weight->name, "' has ", w->is_fp8() ? std::string("fp8") : cat(w->bits, "-bit"),
                " codes); quantize the bf16 checkpoint instead");
    targets.insert(w->weight->name);
  }
  // Plan the shards first: their count is part of every file name.
  std::vector<std::vector<Planned>> shards(1);
  size_t shard_bytes = 0, total_bytes = 0;
  for (const std::string& name : ck.store.names()) {
    const TensorInfo* t = ck.store.find(name);
    const bool q = targets.count(name) > 0;
    const size_t bytes = q ? quantized_bytes(*t, a) : t->nbytes;
    if (shard_bytes > 0 && shard_bytes + bytes > kShardBytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back({t, q, bytes});
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  fs::create_directories(a.out_dir);
  ThreadPool pool(a.threads);
  const ProgressCallback progress = stderr_progress(a.quiet);
  ProgressTask task(&progress, "quantize " + a.model_dir, total_bytes, ProgressUnit::Bytes);
  const auto start = std::chrono::steady_clock::now();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  size_t done = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shard_name(s, shards.size());
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    for (const Planned& p : shards[s]) {
      const TensorInfo& t = *p.tensor;
      const std::string prefix = t.name.substr(0, t.name.size() - std::string(".weight").size());
      if (!p.quantize) {
        writer.add(t.name, t.dtype, t.shape, t.data);
        weight_map[t.name] = file;
      } else if (a.fp8()) {
        const Fp8Matrix m = quantize_fp8(t.data, t.dtype, t.shape[0], t.shape[1], &pool, t.name);
        writer.add(t.name, DType::F8_E4M3, {m.rows, m.cols}, m.codes.data());
        writer.add(prefix + ".weight_scale", DType::F32, {m.rows}, m.scales.data());
        for (const char* suffix : {".weight", ".weight_scale"}) weight_map[prefix + suffix] = file;
      } else {
        const QuantizedMatrix m =
            quantize_matrix(t.data, t.dtype, t.shape[0], t.shape[1], a.affine_bits(), a.group_size, &pool,
                            t.name, a.rounding == "minmax" ? QuantRounding::MinMax : QuantRounding::Mlx);
        const std::vector<int64_t> groups{m.rows, m.cols / a.group_size};
        writer.add(t.name, DType::U32, {m.rows, m.cols * a.affine_bits() / 32}, m.codes.data());
        writer.add(prefix + ".scales", m.scale_dtype, groups, m.scales.data());
        writer.add(prefix + ".biases", m.scale_dtype, groups, m.biases.data());
        for (const char* suffix : {".weight", ".scales", ".biases"}) weight_map[prefix + suffix] = file;
      }
      done += p.out_bytes;
      task.set(done);
    }
    writer.write((fs::path(a.out_dir) / file).string());
    ck.store.release_resident_pages();  // the input pages of this shard are not read again
  }
  write_json(fs::path(a.out_dir) / "model.safetensors.index.json",
             {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}});
  write_side_files(a);
  task.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string format = a.fp8() ? std::string("fp8 per-channel") : cat(a.bits, "-bit group ", a.group_size);
  std::fprintf(stderr, "wrote %s: %zu shard(s), %.2f GB, %s, in %.1f s\n", a.out_dir.c_str(),
               shards.size(), total_bytes / 1e9, format.c_str(), seconds);
}

const Command kQuantize("quantize", [](CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* c = app.add_subcommand("quantize", "Write a copy of a checkpoint with the decoder quantized (MLX affine or fp8)");
  c->add_option("--model", args->model_dir, kModelHelp)->required();
  c->add_option("--output", args->out_dir, "Directory to write (created)")->required();
  c->add_option("--bits", args->bits,
                "8 or 4 (MLX affine groups), or fp8 (E4M3, one f32 scale per output channel)")
      ->check(CLI::IsMember({"4", "8", "fp8"}));
  c->add_option("--group-size", args->group_size, "Inputs per group: 32, 64 or 128 (affine only)")
      ->check(CLI::IsMember(quant_group_size_list()));
  c->add_option("--threads", args->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 4096));
  c->add_option("--rounding", args->rounding,
                "mlx: the bytes mlx.core.quantize writes (default); minmax: bias = group minimum, "
                "lower 8-bit weight error")
      ->check(CLI::IsMember({"mlx", "minmax"}));
  c->add_flag("--quiet", args->quiet, "No progress bar or summary of the download and the quantization on stderr");
  c->callback([args] {
    args->model_dir = hub::resolve_model_dir(args->model_dir, stderr_progress(args->quiet));
    run(*args);
  });
});

}  // namespace
}  // namespace moxin::cli
