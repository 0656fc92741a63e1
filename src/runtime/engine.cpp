#include "runtime/engine.hpp"

#include <algorithm>
#include <filesystem>
#include <optional>

#include "core/check.hpp"
#include "core/progress_task.hpp"
#include "core/thread_pool.hpp"
#include "hub/resolve_model.hpp"

namespace moxin {
namespace {

int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

Tokenizer load_tokenizer(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer.json";
  MOXIN_CHECK(std::filesystem::exists(path), "[engine] ", dir,
              " has no tokenizer.json (copy the checkpoint's tokenizer.json next to its weights)");
  return Tokenizer::from_file(path.string());
}

double tensor_bytes(const TensorInfo* t) { return t ? static_cast<double>(t->nbytes) : 0.0; }
double linear_bytes(const LinearWeight& w) {
  return tensor_bytes(w.weight) + tensor_bytes(w.scales) + tensor_bytes(w.qbiases) + tensor_bytes(w.bias);
}

// Every decoder matrix and norm once (the embedding table is read a row per token).
double weight_bytes(const DecoderWeights& d) {
  double bytes = linear_bytes(d.lm_head) + tensor_bytes(d.final_norm.weight);
  for (const auto& l : d.layers)
    bytes += linear_bytes(l.q) + linear_bytes(l.k) + linear_bytes(l.v) + linear_bytes(l.o) +
             linear_bytes(l.gate) + linear_bytes(l.up) + linear_bytes(l.down) +
             tensor_bytes(l.input_norm.weight) + tensor_bytes(l.post_attention_norm.weight);
  return bytes;
}

}  // namespace

Engine::Engine(const std::string& model_dir, const EngineOptions& options)
    : checkpoint_(load_checkpoint(model_dir)),
      tokenizer_(load_tokenizer(model_dir)),
      backend_(create_backend(options.backend)),
      pool_(blocks_for(options.max_context, options.block_size), options.block_size) {
  // The pool is shared by all sequences, so it may exceed one sequence's maximum position
  // (checked per sequence in step() and decode()).
  MOXIN_CHECK(options.max_context > 0 && options.max_context <= (1 << 24), "[engine] --max-context ",
              options.max_context, " must be in 1..", 1 << 24, " KV cache tokens");
  MOXIN_CHECK(static_cast<int64_t>(tokenizer_.vocab_size()) <= checkpoint_.config.decoder.vocab,
              "[engine] tokenizer.json has ", tokenizer_.vocab_size(),
              " tokens but the model's embedding has only ", checkpoint_.config.decoder.vocab, " rows");
  const DecoderWeights mapped_decoder = checkpoint_.decoder;
  MOXIN_CHECK(!options.quantize_fp8 || options.quantize_bits == 0, "[engine] quantize to fp8 or to ",
              options.quantize_bits, " bits, not both");
  if (options.quantize_bits != 0 || options.quantize_fp8) quantize_decoder(options);
  decoder_weight_bytes_ = weight_bytes(checkpoint_.decoder);
  {
    // Only a device backend copies the weights; the CPU reads the mapped pages as they are.
    const bool copies = backend_->copies_weights();
    ProgressTask upload(copies ? &options.progress : nullptr, "upload the weights to " + backend_->name(),
                        checkpoint_.store.total_bytes(), ProgressUnit::Bytes);
    const size_t before_weights = backend_->device_memory_used();
    model_ = std::make_unique<Vlm>(*backend_, checkpoint_);
    device_weight_bytes_ = backend_->device_memory_used() - before_weights;
    if (copies) backend_->synchronize();
    upload.set(checkpoint_.store.total_bytes());
    upload.finish();
  }
  const DecoderConfig& d = checkpoint_.config.decoder;
  const int blocks = blocks_for(options.max_context, options.block_size);
  const size_t before_cache = backend_->device_memory_used();
  kv_cache_ = backend_->create_kv_cache({d.layers, d.kv_heads, d.head_dim, options.block_size, blocks,
                                         options.kv_cache_fp8 ? KvCacheDType::Fp8E4M3 : KvCacheDType::Auto});
  device_kv_cache_bytes_ = backend_->device_memory_used() - before_cache;
  drawn_ = backend_->empty({kMaxDrawnRows, 1}, DType::I32);
  graphs_ = std::make_unique<DecodeGraphs>(*backend_, model_->decoder(), *kv_cache_, options.block_size, blocks,
                                           drawn_);
  vision_graphs_ = std::make_unique<VisionGraphs>(*backend_, *model_);
  // A device backend holds its own copy now: neither the mapped pages nor the host-side
  // quantized matrices (4.5 GB for the full model in 4 bits) need stay resident.
  if (backend_->copies_weights()) {
    backend_->synchronize();
    checkpoint_.decoder = mapped_decoder;  // points at nothing freed below
    quantized_.reset();
    checkpoint_.store.release_resident_pages();
  }
}

Engine::~Engine() = default;

void Engine::quantize_decoder(const EngineOptions& options) {
  std::optional<ProgressTask> progress;  // started by the first report, which knows the total
  ThreadPool pool(options.backend.threads);
  quantized_ = std::make_unique<QuantizedWeights>();
  const auto report = [&](int done, int total, const TensorInfo& dense) {
    // Its bf16 pages are never read again: dropping them as we go keeps the peak resident
    // set near the quantized size instead of the whole bf16 decoder's.
    checkpoint_.store.release_resident_pages(dense);
    if (!progress)
      progress.emplace(&options.progress,
                       options.quantize_fp8 ? std::string("quantize the decoder to fp8")
                                            : cat("quantize the decoder to ", options.quantize_bits, " bits"),
                       total, ProgressUnit::Items);
    progress->set(static_cast<uint64_t>(done));
    if (done == total) progress->finish();
  };
  checkpoint_.decoder =
      options.quantize_fp8
          ? quantized_->quantize_fp8(checkpoint_.decoder, &pool, report)
          : quantized_->quantize(checkpoint_.decoder, options.quantize_bits, options.quantize_group_size, &pool,
                                 report);
}

std::unique_ptr<Engine> Engine::load(const std::string& model, const EngineOptions& options) {
  return std::unique_ptr<Engine>(new Engine(hub::resolve_model_dir(model, options.progress), options));
}

ImageFeatures Engine::encode_images(std::span<const float> dino, std::span<const float> siglip,
                                    int batch) {
  const int size = config().dino.image_size;
  const std::vector<int64_t> shape{batch, size, size, 3};
  const size_t expected = static_cast<size_t>(batch) * size * size * 3;
  MOXIN_CHECK(dino.size() == expected && siglip.size() == expected, "[engine] expected ", batch,
              " preprocessed images of ", size, "x", size, "x3");
  Tensor d = backend_->from_host_f32(dino.data(), shape);
  Tensor s = backend_->from_host_f32(siglip.data(), shape);
  if (std::optional<ImageFeatures> f = vision_graphs_->run(d, s, batch)) return *f;
  return model_->encode_images(d, s, batch);
}

namespace {

// Each sequence's input: a token id in the vocabulary, or a row of the drawn tokens.
void check_inputs(std::span<const int32_t> ids, std::span<const int32_t> sources, int32_t vocab) {
  MOXIN_CHECK(sources.empty() || sources.size() == ids.size(), "[engine] ", ids.size(), " token ids but ",
              sources.size(), " drawn-token sources");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!sources.empty() && sources[i] >= 0) {
      MOXIN_CHECK(sources[i] < Engine::kMaxDrawnRows, "[engine] drawn-token source ", sources[i],
                  " is outside the ", Engine::kMaxDrawnRows, " drawn rows");
      continue;
    }
    MOXIN_CHECK(ids[i] >= 0 && ids[i] < vocab, "[engine] token id ", ids[i], " is outside the vocabulary (0..",
                vocab - 1, ")");
  }
}

}  // namespace

Tensor Engine::embed(std::span<const int32_t> ids, std::span<const int32_t> sources) {
  check_inputs(ids, sources, config().decoder.vocab);
  const int64_t n = static_cast<int64_t>(ids.size());
  Tensor t = backend_->from_host_i32(ids.data(), {n});
  if (sources.empty()) return model_->decoder().embed(t);
  Tensor s = backend_->from_host_i32(sources.data(), {n});
  return model_->decoder().embed(t, {&s, &drawn_});
}

Tensor Engine::step(std::span<SequenceChunk> chunks) {
  MOXIN_CHECK(!chunks.empty(), "[engine] step() needs at least one sequence");
  const int hidden = config().decoder.hidden;
  int64_t total = 0;
  size_t max_blocks = 0;
  int max_context = 0;
  for (SequenceChunk& c : chunks) {
    MOXIN_CHECK(c.embeddings.cols() == hidden && c.embeddings.rows() > 0,
                "[engine] a chunk's embeddings are ", c.embeddings.shape_str(), ", expected [n, ",
                hidden, "]");
    const int64_t end = c.sequence->length + c.embeddings.rows();
    MOXIN_CHECK(end <= config().decoder.max_position, "[engine] the sequence would reach ", end,
                " positions, beyond the model's maximum of ", config().decoder.max_position);
    pool_.reserve(c.sequence->block_table, end);
    total += c.embeddings.rows();
    max_blocks = std::max(max_blocks, c.sequence->block_table.size());
    max_context = std::max(max_context, static_cast<int>(end));
  }

  // Per-token metadata and the padded block table, built on the host, uploaded once.
  std::vector<int32_t> token_seq, token_pos, last_rows;
  std::vector<int32_t> tables(chunks.size() * max_blocks, 0);
  Tensor x = backend_->empty_act({total, hidden});
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const SequenceChunk& c = chunks[i];
    for (int64_t t = 0; t < c.embeddings.rows(); ++t) {
      token_seq.push_back(static_cast<int32_t>(i));
      token_pos.push_back(static_cast<int32_t>(c.sequence->length + t));
    }
    std::copy(c.sequence->block_table.begin(), c.sequence->block_table.end(),
              tables.begin() + static_cast<ptrdiff_t>(i * max_blocks));
    backend_->copy_rows(c.embeddings, x, row);
    row += c.embeddings.rows();
    last_rows.push_back(static_cast<int32_t>(row - 1));
  }
  AttentionBatch batch;
  batch.token_seq = backend_->from_host_i32(token_seq.data(), {total});
  batch.token_pos = backend_->from_host_i32(token_pos.data(), {total});
  batch.block_tables = backend_->from_host_i32(
      tables.data(), {static_cast<int64_t>(chunks.size()), static_cast<int64_t>(max_blocks)});
  batch.max_context = max_context;
  batch.one_token_per_sequence = total == static_cast<int64_t>(chunks.size());  // every chunk is one token

  model_->decoder().forward(x, batch.token_pos, batch, *kv_cache_);
  for (SequenceChunk& c : chunks) c.sequence->length += c.embeddings.rows();
  Tensor rows = backend_->from_host_i32(last_rows.data(), {static_cast<int64_t>(last_rows.size())});
  return model_->decoder().logits(x, rows);
}

Tensor Engine::decode(std::span<SequenceState* const> sequences, std::span<const int32_t> tokens,
                      std::span<const int32_t> sources) {
  MOXIN_CHECK(!sequences.empty() && sequences.size() == tokens.size(), "[engine] decode: ",
              sequences.size(), " sequences but ", tokens.size(), " tokens");
  std::vector<int32_t> positions;
  std::vector<const std::vector<int32_t>*> tables;
  for (SequenceState* s : sequences) {
    MOXIN_CHECK(s->length + 1 <= config().decoder.max_position, "[engine] the sequence would pass the model's ",
                config().decoder.max_position, " positions");
    pool_.reserve(s->block_table, s->length + 1);
    positions.push_back(static_cast<int32_t>(s->length));
    tables.push_back(&s->block_table);
  }
  check_inputs(tokens, sources, config().decoder.vocab);
  if (auto logits = graphs_->run(tokens, sources, positions, tables)) {
    for (SequenceState* s : sequences) s->length += 1;
    return *logits;
  }
  Tensor embeddings = embed(tokens, sources);
  std::vector<SequenceChunk> chunks;
  for (size_t i = 0; i < sequences.size(); ++i)
    chunks.push_back({sequences[i], embeddings.rows_view(static_cast<int64_t>(i), 1)});
  return step(chunks);
}

}  // namespace moxin
