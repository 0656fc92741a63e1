// The C++ side of checkpoint mapping that `moxin inspect` cannot show: which tensor each
// weight slot points at, the patch-embedding matrix view, quantized linears' fields, and
// pointers staying valid when the Checkpoint moves. (Refusals are tested in test_checkpoint.py.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "io/checkpoint.hpp"
#include "io/safetensors_writer.hpp"

namespace moxin {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kDino = 32, kSiglip = 48, kHidden = 64, kHeads = 4, kHeadDim = 16, kKv = 1;
constexpr int64_t kInter = 128, kVocab = 96, kLayers = 2, kDepth = 3;

// Writes a tiny checkpoint with the published names; decoder linears optionally MLX-quantized.
class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moxin_ckpt_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const unsigned seed = std::random_device{}();
    std::printf("[seed] %s: %u\n", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                seed);
    rng_.seed(seed);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void add(const std::string& name, std::vector<int64_t> shape, DType dtype = DType::BF16) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * dtype_size(dtype));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng_());
    writer_.add(name, dtype, shape, bytes.data());
  }
  void add_vit(const std::string& p, int64_t dim, bool dinov2) {
    add(p + "patch_embed.proj.weight", {dim, 3, 14, 14});
    add(p + "patch_embed.proj.bias", {dim});
    add(p + "pos_embed", {1, 256, dim});
    if (dinov2) {
      add(p + "cls_token", {1, 1, dim});
      add(p + "reg_token", {1, 4, dim});
    }
    for (int i = 0; i < kDepth; ++i) {
      const std::string b = p + "blocks." + std::to_string(i) + ".";
      for (const char* n : {"norm1", "norm2"}) {
        add(b + n + ".weight", {dim});
        add(b + n + ".bias", {dim});
      }
      add(b + "attn.qkv.weight", {3 * dim, dim});
      add(b + "attn.qkv.bias", {3 * dim});
      add(b + "attn.proj.weight", {dim, dim});
      add(b + "attn.proj.bias", {dim});
      add(b + "mlp.fc1.weight", {4 * dim, dim});
      add(b + "mlp.fc1.bias", {4 * dim});
      add(b + "mlp.fc2.weight", {dim, 4 * dim});
      add(b + "mlp.fc2.bias", {dim});
      if (dinov2) {
        add(b + "ls1.scale_factor", {dim});
        add(b + "ls2.scale_factor", {dim});
      }
    }
  }
  void add_linear(const std::string& p, int64_t out, int64_t in, int bits, int group) {
    if (!bits) return add(p + ".weight", {out, in});
    add(p + ".weight", {out, in * bits / 32}, DType::U32);
    add(p + ".scales", {out, in / group});
    add(p + ".biases", {out, in / group});
  }
  void write(int bits = 0, int group = 0) {
    add_vit("vision_backbone.featurizer.", kDino, true);
    add_vit("vision_backbone.fused_featurizer.", kSiglip, false);
    const int64_t in = kDino + kSiglip;
    add("projector.fc1.weight", {4 * in, in});
    add("projector.fc1.bias", {4 * in});
    add("projector.fc2.weight", {kHidden, 4 * in});
    add("projector.fc2.bias", {kHidden});
    add("projector.fc3.weight", {kHidden, kHidden});
    add("projector.fc3.bias", {kHidden});
    const std::string p = "language_model.";
    add(p + "model.embed_tokens.weight", {kVocab, kHidden});
    add(p + "model.norm.weight", {kHidden});
    for (int i = 0; i < kLayers; ++i) {
      const std::string l = p + "model.layers." + std::to_string(i) + ".";
      add(l + "input_layernorm.weight", {kHidden});
      add(l + "post_attention_layernorm.weight", {kHidden});
      add_linear(l + "self_attn.q_proj", kHeads * kHeadDim, kHidden, bits, group);
      add_linear(l + "self_attn.k_proj", kKv * kHeadDim, kHidden, bits, group);
      add_linear(l + "self_attn.v_proj", kKv * kHeadDim, kHidden, bits, group);
      add_linear(l + "self_attn.o_proj", kHidden, kHeads * kHeadDim, bits, group);
      add_linear(l + "mlp.gate_proj", kInter, kHidden, bits, group);
      add_linear(l + "mlp.up_proj", kInter, kHidden, bits, group);
      add_linear(l + "mlp.down_proj", kHidden, kInter, bits, group);
    }
    add_linear(p + "lm_head", kVocab, kHidden, bits, group);
    writer_.write((dir_ / "model.safetensors").string());
    std::ofstream(dir_ / "config.json") << R"({"text_config": {"num_attention_heads": 4}})";
    if (bits)
      std::ofstream(dir_ / "quantize_config.json")
          << "{\"bits\": " << bits << ", \"group_size\": " << group << "}";
  }

  fs::path dir_;
  std::mt19937 rng_;
  SafetensorsWriter writer_;
};

TEST_F(CheckpointTest, MapsEverySlotAndSurvivesMoves) {
  write();
  Checkpoint loaded = load_checkpoint(dir_.string());
  const Checkpoint ck = std::move(loaded);  // pointers into the store must stay valid
  const TensorStore& s = ck.store;

  EXPECT_EQ(ck.dino.blocks.size(), static_cast<size_t>(kDepth - 1));  // last block never runs
  EXPECT_EQ(ck.siglip.blocks.size(), static_cast<size_t>(kDepth - 1));
  EXPECT_EQ(ck.dino.cls_token, s.find("vision_backbone.featurizer.cls_token"));
  EXPECT_EQ(ck.siglip.cls_token, nullptr);
  EXPECT_EQ(ck.siglip.reg_token, nullptr);
  EXPECT_EQ(ck.dino.blocks[1].ls2, s.find("vision_backbone.featurizer.blocks.1.ls2.scale_factor"));
  EXPECT_EQ(ck.siglip.blocks[0].ls1, nullptr);
  EXPECT_EQ(ck.siglip.blocks[1].fc2.weight,
            s.find("vision_backbone.fused_featurizer.blocks.1.mlp.fc2.weight"));
  EXPECT_EQ(ck.siglip.blocks[1].fc2.bias,
            s.find("vision_backbone.fused_featurizer.blocks.1.mlp.fc2.bias"));
  EXPECT_EQ(ck.siglip.blocks[1].fc2.in_features, 4 * kSiglip);

  // The conv weight [O, 3, 14, 14] read as a matrix [O, 588] is the same bytes.
  const LinearWeight& patch = ck.dino.patch_linear;
  ASSERT_NE(patch.weight, nullptr);
  EXPECT_EQ(patch.weight->data, ck.dino.patch_weight->data);
  EXPECT_EQ(patch.weight->nbytes, ck.dino.patch_weight->nbytes);
  EXPECT_EQ(patch.weight->shape, (std::vector<int64_t>{kDino, 3 * 14 * 14}));
  EXPECT_EQ(patch.bias, ck.dino.patch_bias);
  EXPECT_EQ(patch.out_features, kDino);
  EXPECT_EQ(patch.in_features, 588);

  EXPECT_EQ(ck.projector.fc2.weight, s.find("projector.fc2.weight"));
  EXPECT_EQ(ck.config.projector_hidden, 4 * (kDino + kSiglip));
  ASSERT_EQ(ck.decoder.layers.size(), static_cast<size_t>(kLayers));
  const DecoderLayerWeights& l1 = ck.decoder.layers[1];
  EXPECT_EQ(l1.k.weight, s.find("language_model.model.layers.1.self_attn.k_proj.weight"));
  EXPECT_EQ(l1.k.bias, nullptr);
  EXPECT_EQ(l1.k.bits, 0);
  EXPECT_EQ(l1.k.out_features, kKv * kHeadDim);
  EXPECT_EQ(l1.down.in_features, kInter);
  EXPECT_EQ(l1.post_attention_norm.weight,
            s.find("language_model.model.layers.1.post_attention_layernorm.weight"));
  EXPECT_EQ(l1.post_attention_norm.bias, nullptr);
  EXPECT_EQ(ck.decoder.lm_head.weight, s.find("language_model.lm_head.weight"));
  EXPECT_EQ(ck.decoder.embed, s.find("language_model.model.embed_tokens.weight"));
  EXPECT_EQ(ck.config.decoder.kv_heads, kKv);
  EXPECT_EQ(ck.config.decoder.head_dim, kHeadDim);
}

TEST_F(CheckpointTest, QuantizedLinearsCarryTheirParameters) {
  const int bits = (rng_() & 1) ? 4 : 8;
  write(bits, 64);
  const Checkpoint ck = load_checkpoint(dir_.string());
  for (const LinearWeight* w : {&ck.decoder.layers[0].down, &ck.decoder.lm_head}) {
    EXPECT_EQ(w->bits, bits);
    EXPECT_EQ(w->group_size, 64);
    ASSERT_NE(w->scales, nullptr);
    ASSERT_NE(w->qbiases, nullptr);
    EXPECT_EQ(w->weight->dtype, DType::U32);
    EXPECT_EQ(w->weight->shape[1], w->in_features * bits / 32);
    EXPECT_EQ(w->scales->shape, (std::vector<int64_t>{w->out_features, w->in_features / 64}));
  }
  EXPECT_EQ(ck.decoder.layers[0].down.in_features, kInter);
  EXPECT_EQ(ck.decoder.lm_head.out_features, kVocab);
  EXPECT_EQ(ck.decoder.layers[1].o.scales,
            ck.store.find("language_model.model.layers.1.self_attn.o_proj.scales"));
  EXPECT_EQ(ck.decoder.layers[1].o.qbiases,
            ck.store.find("language_model.model.layers.1.self_attn.o_proj.biases"));
  EXPECT_EQ(ck.projector.fc1.bits, 0);  // never quantized
}

}  // namespace
}  // namespace moxin
