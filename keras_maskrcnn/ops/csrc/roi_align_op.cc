// RoIAlign for NHWC feature maps: TensorFlow CPU custom ops for keras_maskrcnn.
//
//   KmrRoiAlign(features [B, H, W, C] T, boxes [N, 4] float32 (y1, x1, y2, x2),
//               box_indices [N] int32) -> output [N, PH, PW, C] T
//   KmrRoiAlignGrad(grads [N, PH, PW, C] T, boxes, box_indices,
//                   features_shape [4] int32) -> d_features [B, H, W, C] T
//   KmrMultiLevelRoiAlign(features: L x [B, H_l, W_l, C] T, boxes, box_indices,
//                         box_levels [N] int32 in [0, L)) -> output [N, PH, PW, C] T
//   KmrMultiLevelRoiAlignGrad(grads, boxes, box_indices, box_levels,
//                             features_shapes: L x [4] int32) -> d_features: L x [B, H_l, W_l, C]
//
// T is float32, bfloat16 or float16; sums are accumulated in float32. Box n reads image
// box_indices[n] of map box_levels[n] (multi-level) at that map's spatial scale.
// Semantics follow torchvision.ops.roi_align (see keras_maskrcnn/ops/custom_roi_align.py): box
// coordinates are scaled by the spatial scale (and shifted by -0.5 when `aligned`), each output
// bin averages a grid of bilinear samples, samples outside [-1, size] read zero.
//
// Bilinear weights factor into a y part and an x part, so for one box we build, per output row
// `ph`, the list of (feature row, summed weight) taps and, per output column `pw`, the list of
// (feature column, summed weight) taps. A bin is then sum_r sum_c wy[r] * wx[c] * f[r, c, :],
// an inner loop over contiguous channels. Taps hitting the same row/column are merged, which
// turns the 4 * S * S reads per bin into (typically) 3 x 3 reads.
//
// The gradient is parallelised over (map, image, channel block) units: each unit owns a disjoint
// slice of d_features and walks the boxes of its image in order, so the result is deterministic
// and needs no atomics.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"

// Passing 32-byte vectors between functions would change the ABI without AVX; ours are inline.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Hot loops get AVX-512 / AVX2+FMA clones picked at load time; the baseline stays portable.
#define KMR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KMR_CLONES
#endif

namespace kmr_roi_align {

using tensorflow::int64;
using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::OpOutputList;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
namespace errors = tensorflow::errors;

// ---------------------------------------------------------------------------------------------
// Element conversions (float accumulation for every storage type).

inline float ToFloat(float v) { return v; }
inline float ToFloat(Eigen::bfloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(Eigen::numext::bit_cast<uint16_t>(v)) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float ToFloat(Eigen::half v) { return static_cast<float>(v); }

template <typename T>
inline T FromFloat(float v) {
  return static_cast<T>(v);
}

// ---------------------------------------------------------------------------------------------
// Sampling plan of one box along one axis.

struct Tap {
  int index;     // feature row (y axis) or column (x axis)
  float weight;  // summed bilinear weight of all samples of the bin hitting `index`
};

struct AxisTaps {
  std::vector<int> begin;  // [pooled + 1] offsets into `taps`
  std::vector<Tap> taps;
};

struct BoxPlan {
  AxisTaps y;
  AxisTaps x;
  float inv_count = 0.f;  // 1 / (samples per bin)
};

struct Params {
  int pooled_h = 1;
  int pooled_w = 1;
  int sampling_ratio = 0;
  bool aligned = true;
};

// Appends a tap for the current bin, merging it with an equal index among the last two taps of
// the bin (samples are visited in coordinate order, so a repeat can only be one of those two).
inline void AddTap(int index, float weight, int bin_begin, std::vector<Tap>* taps) {
  if (weight == 0.f) return;
  const int n = static_cast<int>(taps->size());
  for (int k = n - 1; k >= std::max(bin_begin, n - 2); --k) {
    if ((*taps)[k].index == index) {
      (*taps)[k].weight += weight;
      return;
    }
  }
  taps->push_back({index, weight});
}

// Taps along one axis. `start` is the scaled RoI start, `bin` the bin size, `grid` the samples
// per bin, `size` the feature map extent. Mirrors torchvision's per-sample arithmetic.
void BuildAxis(float start, float bin, int grid, int pooled, int size, AxisTaps* out) {
  out->begin.assign(pooled + 1, 0);
  out->taps.clear();
  for (int p = 0; p < pooled; ++p) {
    const int bin_begin = static_cast<int>(out->taps.size());
    out->begin[p] = bin_begin;
    for (int i = 0; i < grid; ++i) {
      float v = start + p * bin + static_cast<float>(i + .5f) * bin / static_cast<float>(grid);
      // Written as !(inside) so that NaN coordinates read zero too.
      if (!(v >= -1.0f && v <= static_cast<float>(size))) continue;
      if (v <= 0.f) v = 0.f;
      int low = static_cast<int>(v);
      int high;
      if (low >= size - 1) {
        high = low = size - 1;
        v = static_cast<float>(low);
      } else {
        high = low + 1;
      }
      const float l = v - static_cast<float>(low);
      const float h = 1.f - l;
      AddTap(low, h, bin_begin, &out->taps);
      AddTap(high, l, bin_begin, &out->taps);
    }
  }
  out->begin[pooled] = static_cast<int>(out->taps.size());
}

// Samples per bin along one axis. The adaptive count is capped at 2^16 (a bin 65536 feature
// pixels wide) so that absurd boxes cannot overflow or hang; real boxes never get near it.
inline int GridSize(int sampling_ratio, float extent, int pooled) {
  if (sampling_ratio > 0) return sampling_ratio;
  const float g = std::ceil(extent / static_cast<float>(pooled));
  if (!(g > 0.f)) return 0;  // empty or NaN box: the bins read zero
  return static_cast<int>(std::min(g, 65536.f));
}

// One feature map (level) as seen by the kernels.
struct MapGeom {
  int64 batch = 0;
  int64 height = 0;
  int64 width = 0;
  float scale = 1.f;  // feature pixels per input pixel
};

// box: (y1, x1, y2, x2) in input pixels.
void BuildPlan(const float* box, const Params& p, const MapGeom& map, BoxPlan* plan) {
  const float offset = p.aligned ? 0.5f : 0.f;
  const float y1 = box[0] * map.scale - offset;
  const float x1 = box[1] * map.scale - offset;
  const float y2 = box[2] * map.scale - offset;
  const float x2 = box[3] * map.scale - offset;
  float roi_h = y2 - y1;
  float roi_w = x2 - x1;
  if (!p.aligned) {
    roi_h = std::max(roi_h, 1.f);
    roi_w = std::max(roi_w, 1.f);
  }
  const float bin_h = roi_h / static_cast<float>(p.pooled_h);
  const float bin_w = roi_w / static_cast<float>(p.pooled_w);
  const int grid_h = GridSize(p.sampling_ratio, roi_h, p.pooled_h);
  const int grid_w = GridSize(p.sampling_ratio, roi_w, p.pooled_w);
  BuildAxis(y1, bin_h, grid_h, p.pooled_h, static_cast<int>(map.height), &plan->y);
  BuildAxis(x1, bin_w, grid_w, p.pooled_w, static_cast<int>(map.width), &plan->x);
  plan->inv_count = 1.f / std::max(static_cast<float>(grid_h) * static_cast<float>(grid_w), 1.f);
}

// ---------------------------------------------------------------------------------------------
// Inner loops over contiguous channels, 32 channels at a time held in 4 x 8-float vectors (GCC
// vector extensions; the default clone lowers them to SSE pairs).

typedef float V8 __attribute__((vector_size(32)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));

inline V8 Load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline V8 Load8(const Eigen::bfloat16* p) {
  U16x8 h;
  std::memcpy(&h, p, sizeof(h));
  const U32x8 bits = __builtin_convertvector(h, U32x8) << 16;
  V8 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline V8 Load8(const Eigen::half* p) {
  V8 v;
  for (int k = 0; k < 8; ++k) v[k] = static_cast<float>(p[k]);
  return v;
}
inline void Store8(float* p, V8 v) { std::memcpy(p, &v, sizeof(v)); }

// out[c] = sum_t ws[t] * src[pix[t] * channels + c] for c < channels (one output bin).
template <typename T>
inline void WeightedSumImpl(const T* __restrict src, const int32_t* __restrict pix,
                            const float* __restrict ws, int taps, int64 channels,
                            float* __restrict out) {
  int64 c = 0;
  for (; c + 32 <= channels; c += 32) {
    V8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (int t = 0; t < taps; ++t) {
      const T* p = src + pix[t] * channels + c;
      const float w = ws[t];
      a0 += w * Load8(p);
      a1 += w * Load8(p + 8);
      a2 += w * Load8(p + 16);
      a3 += w * Load8(p + 24);
    }
    Store8(out + c, a0);
    Store8(out + c + 8, a1);
    Store8(out + c + 16, a2);
    Store8(out + c + 24, a3);
  }
  for (; c < channels; ++c) {
    float a = 0.f;
    for (int t = 0; t < taps; ++t) a += ws[t] * ToFloat(src[pix[t] * channels + c]);
    out[c] = a;
  }
}

// dst[pix[t] * stride + c] += ws[t] * g[c] for every tap t and c < channels (one gradient bin).
inline void ScatterImpl(float* __restrict dst, const int32_t* __restrict pix, int64 stride,
                        const float* __restrict ws, int taps, const float* __restrict g,
                        int64 channels) {
  int64 c = 0;
  for (; c + 32 <= channels; c += 32) {
    const V8 g0 = Load8(g + c), g1 = Load8(g + c + 8), g2 = Load8(g + c + 16),
             g3 = Load8(g + c + 24);
    for (int t = 0; t < taps; ++t) {
      float* p = dst + pix[t] * stride + c;
      const float w = ws[t];
      Store8(p, Load8(p) + w * g0);
      Store8(p + 8, Load8(p + 8) + w * g1);
      Store8(p + 16, Load8(p + 16) + w * g2);
      Store8(p + 24, Load8(p + 24) + w * g3);
    }
  }
  for (; c < channels; ++c) {
    for (int t = 0; t < taps; ++t) dst[pix[t] * stride + c] += ws[t] * g[c];
  }
}

KMR_CLONES void WeightedSumF32(const float* src, const int32_t* pix, const float* ws, int taps,
                               int64 channels, float* out) {
  WeightedSumImpl(src, pix, ws, taps, channels, out);
}
KMR_CLONES void WeightedSumBF16(const Eigen::bfloat16* src, const int32_t* pix, const float* ws,
                                int taps, int64 channels, float* out) {
  WeightedSumImpl(src, pix, ws, taps, channels, out);
}
KMR_CLONES void ScatterF32(float* dst, const int32_t* pix, int64 stride, const float* ws,
                           int taps, const float* g, int64 channels) {
  ScatterImpl(dst, pix, stride, ws, taps, g, channels);
}

inline void WeightedSum(const float* src, const int32_t* pix, const float* ws, int taps,
                        int64 channels, float* out) {
  WeightedSumF32(src, pix, ws, taps, channels, out);
}
inline void WeightedSum(const Eigen::bfloat16* src, const int32_t* pix, const float* ws, int taps,
                        int64 channels, float* out) {
  WeightedSumBF16(src, pix, ws, taps, channels, out);
}
inline void WeightedSum(const Eigen::half* src, const int32_t* pix, const float* ws, int taps,
                        int64 channels, float* out) {
  WeightedSumImpl(src, pix, ws, taps, channels, out);
}

// All bins of one box as flat taps: bin k = ph * PW + pw owns taps [begin[k], begin[k + 1]),
// each a pixel index (row * W + col) and the weight wy * wx / samples.
struct BoxTaps {
  std::vector<int> begin;
  std::vector<int32_t> pix;
  std::vector<float> ws;
};

void FlattenPlan(const BoxPlan& plan, const Params& p, int64 width, BoxTaps* out) {
  out->begin.resize(static_cast<size_t>(p.pooled_h) * p.pooled_w + 1);
  out->pix.clear();
  out->ws.clear();
  int k = 0;
  for (int ph = 0; ph < p.pooled_h; ++ph) {
    for (int pw = 0; pw < p.pooled_w; ++pw) {
      out->begin[k++] = static_cast<int>(out->pix.size());
      for (int ty = plan.y.begin[ph]; ty < plan.y.begin[ph + 1]; ++ty) {
        const Tap& row = plan.y.taps[ty];
        const float wy = row.weight * plan.inv_count;
        for (int tx = plan.x.begin[pw]; tx < plan.x.begin[pw + 1]; ++tx) {
          const Tap& col = plan.x.taps[tx];
          out->pix.push_back(static_cast<int32_t>(row.index * width + col.index));
          out->ws.push_back(wy * col.weight);
        }
      }
    }
  }
  out->begin[k] = static_cast<int>(out->pix.size());
}

void BuildBoxTaps(const float* box, const Params& p, const MapGeom& map, BoxPlan* plan,
                  BoxTaps* taps) {
  BuildPlan(box, p, map, plan);
  FlattenPlan(*plan, p, map.width, taps);
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

Status ReadParams(OpKernelConstruction* ctx, Params* p) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_height", &p->pooled_h));
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_width", &p->pooled_w));
  TF_RETURN_IF_ERROR(ctx->GetAttr("sampling_ratio", &p->sampling_ratio));
  TF_RETURN_IF_ERROR(ctx->GetAttr("aligned", &p->aligned));
  return Status();
}

Status CheckScale(float scale) {
  if (!(scale > 0.f) || !std::isfinite(scale)) {
    return errors::InvalidArgument("spatial scales must be positive finite floats, got ", scale);
  }
  return Status();
}

// Pixel indices are int32.
Status CheckMapSize(const MapGeom& map) {
  if (map.height <= 0 || map.width <= 0 ||
      map.height * map.width > std::numeric_limits<int32_t>::max()) {
    return errors::InvalidArgument("feature maps must have H, W > 0 and H * W < 2^31, got H = ",
                                   map.height, ", W = ", map.width);
  }
  return Status();
}

// boxes [N, 4], box_indices [N] in [0, batch), box_levels (if given) [N] in [0, num_levels).
Status CheckBoxes(const Tensor& boxes, const Tensor& box_indices, int64 batch,
                  const Tensor* box_levels, int64 num_levels) {
  if (boxes.dims() != 2 || boxes.dim_size(1) != 4) {
    return errors::InvalidArgument("boxes must be [N, 4], got ", boxes.shape().DebugString());
  }
  const int64 n = boxes.dim_size(0);
  if (box_indices.dims() != 1 || box_indices.dim_size(0) != n) {
    return errors::InvalidArgument("box_indices must be [N] with N = ", n, ", got ",
                                   box_indices.shape().DebugString());
  }
  const auto idx = box_indices.flat<int32_t>();
  for (int64 i = 0; i < n; ++i) {
    if (idx(i) < 0 || idx(i) >= batch) {
      return errors::InvalidArgument("box_indices[", i, "] = ", idx(i), " is not in [0, ", batch,
                                     ")");
    }
  }
  if (box_levels == nullptr) return Status();
  if (box_levels->dims() != 1 || box_levels->dim_size(0) != n) {
    return errors::InvalidArgument("box_levels must be [N] with N = ", n, ", got ",
                                   box_levels->shape().DebugString());
  }
  const auto lvl = box_levels->flat<int32_t>();
  for (int64 i = 0; i < n; ++i) {
    if (lvl(i) < 0 || lvl(i) >= num_levels) {
      return errors::InvalidArgument("box_levels[", i, "] = ", lvl(i), " is not in [0, ",
                                     num_levels, ")");
    }
  }
  return Status();
}

// ---------------------------------------------------------------------------------------------
// Forward.

// Pools one box: out [PH * PW, C] from image [H * W, C]; `acc` holds C floats.
template <typename T>
void PoolBox(const BoxTaps& taps, const T* image, int64 channels, float* acc, T* out) {
  const int64 bins = static_cast<int64>(taps.begin.size()) - 1;
  for (int64 k = 0; k < bins; ++k) {
    const int first = taps.begin[k];
    const int count = taps.begin[k + 1] - first;
    T* dst = out + k * channels;
    if constexpr (std::is_same<T, float>::value) {
      WeightedSum(image, taps.pix.data() + first, taps.ws.data() + first, count, channels, dst);
    } else {
      WeightedSum(image, taps.pix.data() + first, taps.ws.data() + first, count, channels, acc);
      for (int64 c = 0; c < channels; ++c) dst[c] = FromFloat<T>(acc[c]);
    }
  }
}

// out [N, PH, PW, C]; box n reads image idx[n] of map levels[n] (map 0 when levels is null).
template <typename T>
void ForwardCore(OpKernelContext* ctx, const Params& p, const std::vector<const T*>& maps,
                 const std::vector<MapGeom>& geom, int64 channels, const float* boxes,
                 const int32_t* idx, const int32_t* levels, int64 num_boxes, T* out) {
  const int64 out_size = static_cast<int64>(p.pooled_h) * p.pooled_w * channels;
  auto work = [&](int64 begin, int64 end) {
    BoxPlan plan;
    BoxTaps taps;
    std::vector<float> acc(channels);
    for (int64 n = begin; n < end; ++n) {
      const int level = levels == nullptr ? 0 : levels[n];
      const MapGeom& map = geom[level];
      BuildBoxTaps(boxes + 4 * n, p, map, &plan, &taps);
      const T* image = maps[level] + idx[n] * map.height * map.width * channels;
      PoolBox(taps, image, channels, acc.data(), out + n * out_size);
    }
  };
  // Rough cost of one box: about 9 taps of `channels` multiply-adds per bin.
  const int64 cost = 10 * out_size * 9 + 1000;
  ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(num_boxes, cost, work);
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Adds the gradient of channels [c0, c0 + cw) of the given boxes into `acc`, a [H * W, cw]
// region with pixel stride `stride` floats; `gbuf` holds cw floats.
template <typename T>
void ScatterBoxes(const std::vector<int64>& box_list, const std::vector<BoxTaps>& all_taps,
                  const T* grads, int64 out_size, int64 channels, int64 c0, int64 cw,
                  int64 stride, float* acc, float* gbuf) {
  for (const int64 n : box_list) {
    const BoxTaps& taps = all_taps[n];
    const int64 bins = static_cast<int64>(taps.begin.size()) - 1;
    for (int64 k = 0; k < bins; ++k) {
      const T* g = grads + n * out_size + k * channels + c0;
      for (int64 c = 0; c < cw; ++c) gbuf[c] = ToFloat(g[c]);
      const int first = taps.begin[k];
      ScatterF32(acc, taps.pix.data() + first, stride, taps.ws.data() + first,
                 taps.begin[k + 1] - first, gbuf, cw);
    }
  }
}

// outs[l] [B, H_l, W_l, C] receives the gradient of the boxes of map l (all zero if none).
template <typename T>
void BackwardCore(OpKernelContext* ctx, const Params& p, const std::vector<T*>& outs,
                  const std::vector<MapGeom>& geom, int64 channels, const T* grads,
                  const float* boxes, const int32_t* idx, const int32_t* levels,
                  int64 num_boxes) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64 num_levels = static_cast<int64>(geom.size());
  const int64 batch = geom[0].batch;
  std::vector<BoxTaps> all_taps(num_boxes);
  workers->ParallelFor(num_boxes, 20 * p.pooled_h * p.pooled_w, [&](int64 begin, int64 end) {
    BoxPlan plan;
    for (int64 n = begin; n < end; ++n) {
      const int level = levels == nullptr ? 0 : levels[n];
      BuildBoxTaps(boxes + 4 * n, p, geom[level], &plan, &all_taps[n]);
    }
  });
  // Boxes of each (map, image), in box order.
  std::vector<std::vector<int64>> groups(num_levels * batch);
  for (int64 n = 0; n < num_boxes; ++n) {
    groups[(levels == nullptr ? 0 : levels[n]) * batch + idx[n]].push_back(n);
  }

  // Channel blocks of >= 16 floats (a cache line), enough units to keep every thread busy.
  const int64 threads = std::max(1, workers->NumThreads());
  const int64 want_blocks = std::max<int64>(1, (4 * threads + batch - 1) / batch);
  int64 block = (channels + want_blocks - 1) / want_blocks;
  block = std::min(channels, std::max<int64>(16, (block + 15) / 16 * 16));
  const int64 num_blocks = (channels + block - 1) / block;
  const int64 out_size = static_cast<int64>(p.pooled_h) * p.pooled_w * channels;

  auto work = [&](int64 begin, int64 end) {
    std::vector<float> gbuf(block);
    std::vector<float> local;
    for (int64 unit = begin; unit < end; ++unit) {
      const int64 group = unit / num_blocks;  // level * batch + image
      const MapGeom& map = geom[group / batch];
      const int64 pixels = map.height * map.width;
      const int64 c0 = (unit % num_blocks) * block;
      const int64 cw = std::min(block, channels - c0);
      T* dst = outs[group / batch] + (group % batch) * pixels * channels + c0;
      float* acc;
      int64 stride;
      if constexpr (std::is_same<T, float>::value) {
        acc = dst;  // accumulate in place
        stride = channels;
        for (int64 px = 0; px < pixels; ++px) {
          std::fill(acc + px * stride, acc + px * stride + cw, 0.f);
        }
      } else {
        local.assign(pixels * cw, 0.f);
        acc = local.data();
        stride = cw;
      }
      ScatterBoxes(groups[group], all_taps, grads, out_size, channels, c0, cw, stride, acc,
                   gbuf.data());
      if constexpr (!std::is_same<T, float>::value) {
        for (int64 px = 0; px < pixels; ++px) {
          for (int64 c = 0; c < cw; ++c) dst[px * channels + c] = FromFloat<T>(acc[px * cw + c]);
        }
      }
    }
  };
  // Units differ a lot in cost (maps of several sizes): a high unit cost makes every unit its
  // own task, so the pool balances them.
  workers->ParallelFor(num_levels * batch * num_blocks, 1 << 24, work);
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// Which maps some box reads (all of them in the single-level case).
std::vector<bool> UsedLevels(const int32_t* levels, int64 num_boxes, int64 num_levels) {
  std::vector<bool> used(num_levels, levels == nullptr);
  for (int64 n = 0; levels != nullptr && n < num_boxes; ++n) used[levels[n]] = true;
  return used;
}

MapGeom GeomOf(const TensorShape& shape, float scale) {
  return {shape.dim_size(0), shape.dim_size(1), shape.dim_size(2), scale};
}

// Reads a features_shape input ([4] int32, all >= 0).
Status ShapeFromTensor(const Tensor& t, TensorShape* shape) {
  if (t.dims() != 1 || t.NumElements() != 4) {
    return errors::InvalidArgument("feature shapes must be [4] int32, got ",
                                   t.shape().DebugString());
  }
  const auto v = t.flat<int32_t>();
  for (int i = 0; i < 4; ++i) {
    if (v(i) < 0) return errors::InvalidArgument("feature shapes must be >= 0");
  }
  *shape = TensorShape({v(0), v(1), v(2), v(3)});
  return Status();
}

Status CheckFeatures(const std::vector<TensorShape>& shapes) {
  for (const TensorShape& s : shapes) {
    if (s.dims() != 4) {
      return errors::InvalidArgument("features must be [B, H, W, C], got ", s.DebugString());
    }
    if (s.dim_size(0) != shapes[0].dim_size(0) || s.dim_size(3) != shapes[0].dim_size(3)) {
      return errors::InvalidArgument("all feature maps must share B and C, got ",
                                     shapes[0].DebugString(), " and ", s.DebugString());
    }
  }
  return Status();
}

// Shared by the single- and multi-level forward ops.
template <typename T>
void ComputeForward(OpKernelContext* ctx, const Params& p, const std::vector<const Tensor*>& maps,
                    const std::vector<float>& scales, const Tensor& boxes,
                    const Tensor& box_indices, const Tensor* box_levels) {
  std::vector<TensorShape> shapes;
  for (const Tensor* t : maps) shapes.push_back(t->shape());
  OP_REQUIRES_OK(ctx, CheckFeatures(shapes));
  const int64 batch = shapes[0].dim_size(0);
  const int64 channels = shapes[0].dim_size(3);
  const int64 num_levels = static_cast<int64>(maps.size());
  OP_REQUIRES_OK(ctx, CheckBoxes(boxes, box_indices, batch, box_levels, num_levels));
  const int64 num_boxes = boxes.dim_size(0);
  Tensor* output = nullptr;
  const TensorShape out_shape({num_boxes, p.pooled_h, p.pooled_w, channels});
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
  if (output->NumElements() == 0) return;

  const int32_t* levels = box_levels == nullptr ? nullptr : box_levels->flat<int32_t>().data();
  const std::vector<bool> used = UsedLevels(levels, num_boxes, num_levels);
  std::vector<MapGeom> geom;
  std::vector<const T*> data;
  for (int64 l = 0; l < num_levels; ++l) {
    geom.push_back(GeomOf(shapes[l], scales[l]));
    OP_REQUIRES_OK(ctx, CheckScale(scales[l]));
    if (used[l]) OP_REQUIRES_OK(ctx, CheckMapSize(geom.back()));  // a box on an empty map
    data.push_back(maps[l]->flat<T>().data());
  }
  ForwardCore(ctx, p, data, geom, channels, boxes.flat<float>().data(),
              box_indices.flat<int32_t>().data(), levels, num_boxes, output->flat<T>().data());
}

// Shared by the single- and multi-level gradient ops; `outs` are allocated by the caller.
template <typename T>
void ComputeBackward(OpKernelContext* ctx, const Params& p, const std::vector<Tensor*>& outs,
                     const std::vector<float>& scales, const Tensor& grads, const Tensor& boxes,
                     const Tensor& box_indices, const Tensor* box_levels) {
  std::vector<TensorShape> shapes;
  for (const Tensor* t : outs) shapes.push_back(t->shape());
  const int64 batch = shapes[0].dim_size(0);
  const int64 channels = shapes[0].dim_size(3);
  const int64 num_levels = static_cast<int64>(outs.size());
  OP_REQUIRES_OK(ctx, CheckBoxes(boxes, box_indices, batch, box_levels, num_levels));
  const int64 num_boxes = boxes.dim_size(0);
  const TensorShape expected({num_boxes, p.pooled_h, p.pooled_w, channels});
  OP_REQUIRES(ctx, grads.shape() == expected,
              errors::InvalidArgument("grads must be ", expected.DebugString(), ", got ",
                                      grads.shape().DebugString()));
  const int32_t* levels = box_levels == nullptr ? nullptr : box_levels->flat<int32_t>().data();
  const std::vector<bool> used = UsedLevels(levels, num_boxes, num_levels);
  std::vector<MapGeom> geom;
  std::vector<T*> data;
  for (int64 l = 0; l < num_levels; ++l) {
    geom.push_back(GeomOf(shapes[l], scales[l]));
    OP_REQUIRES_OK(ctx, CheckScale(scales[l]));
    if (used[l] && num_boxes > 0) OP_REQUIRES_OK(ctx, CheckMapSize(geom.back()));
    data.push_back(outs[l]->flat<T>().data());
  }
  if (num_boxes == 0 || channels == 0) {
    for (Tensor* t : outs) {
      std::fill(t->flat<T>().data(), t->flat<T>().data() + t->NumElements(), FromFloat<T>(0.f));
    }
    return;
  }
  // Every (map, image, channel block) unit writes its whole slice, zeros included.
  BackwardCore(ctx, p, data, geom, channels, grads.flat<T>().data(), boxes.flat<float>().data(),
               box_indices.flat<int32_t>().data(), levels, num_boxes);
}

template <typename T>
class RoiAlignOp : public OpKernel {
 public:
  explicit RoiAlignOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spatial_scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    ComputeForward<T>(ctx, params_, {&ctx->input(0)}, {scale_}, ctx->input(1), ctx->input(2),
                      nullptr);
  }

 private:
  Params params_;
  float scale_ = 1.f;
};

template <typename T>
class RoiAlignGradOp : public OpKernel {
 public:
  explicit RoiAlignGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spatial_scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    TensorShape shape;
    OP_REQUIRES_OK(ctx, ShapeFromTensor(ctx->input(3), &shape));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &output));
    ComputeBackward<T>(ctx, params_, {output}, {scale_}, ctx->input(0), ctx->input(1),
                       ctx->input(2), nullptr);
  }

 private:
  Params params_;
  float scale_ = 1.f;
};

Status ReadScales(OpKernelConstruction* ctx, std::vector<float>* scales) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scales", scales));
  int num_levels = 0;
  TF_RETURN_IF_ERROR(ctx->GetAttr("num_levels", &num_levels));
  if (static_cast<int>(scales->size()) != num_levels) {
    return errors::InvalidArgument("spatial_scales must have num_levels = ", num_levels,
                                   " entries, got ", scales->size());
  }
  return Status();
}

template <typename T>
class MultiLevelRoiAlignOp : public OpKernel {
 public:
  explicit MultiLevelRoiAlignOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
    OP_REQUIRES_OK(ctx, ReadScales(ctx, &scales_));
  }

  void Compute(OpKernelContext* ctx) override {
    OpInputList features;
    OP_REQUIRES_OK(ctx, ctx->input_list("features", &features));
    std::vector<const Tensor*> maps;
    for (int l = 0; l < features.size(); ++l) maps.push_back(&features[l]);
    ComputeForward<T>(ctx, params_, maps, scales_, ctx->input(features.size()),
                      ctx->input(features.size() + 1), &ctx->input(features.size() + 2));
  }

 private:
  Params params_;
  std::vector<float> scales_;
};

template <typename T>
class MultiLevelRoiAlignGradOp : public OpKernel {
 public:
  explicit MultiLevelRoiAlignGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
    OP_REQUIRES_OK(ctx, ReadScales(ctx, &scales_));
  }

  void Compute(OpKernelContext* ctx) override {
    OpInputList shapes;
    OP_REQUIRES_OK(ctx, ctx->input_list("features_shapes", &shapes));
    OpOutputList d_features;
    OP_REQUIRES_OK(ctx, ctx->output_list("d_features", &d_features));
    std::vector<TensorShape> dims(shapes.size());
    for (int l = 0; l < shapes.size(); ++l) {
      OP_REQUIRES_OK(ctx, ShapeFromTensor(shapes[l], &dims[l]));
    }
    OP_REQUIRES_OK(ctx, CheckFeatures(dims));
    std::vector<Tensor*> outs(shapes.size());
    for (int l = 0; l < shapes.size(); ++l) {
      OP_REQUIRES_OK(ctx, d_features.allocate(l, dims[l], &outs[l]));
    }
    ComputeBackward<T>(ctx, params_, outs, scales_, ctx->input(0), ctx->input(1), ctx->input(2),
                       &ctx->input(3));
  }

 private:
  Params params_;
  std::vector<float> scales_;
};

// ---------------------------------------------------------------------------------------------
// Registration.

Status PooledShape(InferenceContext* c, DimensionHandle num_boxes, DimensionHandle channels) {
  int pooled_h, pooled_w;
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &pooled_h));
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pooled_w));
  c->set_output(0, c->MakeShape({num_boxes, pooled_h, pooled_w, channels}));
  return Status();
}

// N from boxes [N, 4] and the [N] vectors at inputs first_vector..last_vector.
Status NumBoxes(InferenceContext* c, int boxes_input, int first_vector, int last_vector,
                DimensionHandle* num_boxes) {
  ShapeHandle boxes, vec;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input), 2, &boxes));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &unused));
  *num_boxes = c->Dim(boxes, 0);
  for (int i = first_vector; i <= last_vector; ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &vec));
    TF_RETURN_IF_ERROR(c->Merge(*num_boxes, c->Dim(vec, 0), num_boxes));
  }
  return Status();
}

// Output i = the shape held by the [4] int32 input `input`, with C merged with the grads' C.
Status ShapeFromShapeInput(InferenceContext* c, int input, int output) {
  ShapeHandle vec, out, grads;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 1, &vec));
  DimensionHandle unused, channels;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(vec, 0), 4, &unused));
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(input, &out));
  TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(out, 3), c->Dim(grads, 3), &channels));
  TF_RETURN_IF_ERROR(c->ReplaceDim(out, 3, channels, &out));
  c->set_output(output, out);
  return Status();
}

Status RoiAlignShape(InferenceContext* c) {
  ShapeHandle features;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  DimensionHandle num_boxes;
  TF_RETURN_IF_ERROR(NumBoxes(c, 1, 2, 2, &num_boxes));
  return PooledShape(c, num_boxes, c->Dim(features, 3));
}

Status RoiAlignGradShape(InferenceContext* c) {
  DimensionHandle num_boxes;
  TF_RETURN_IF_ERROR(NumBoxes(c, 1, 2, 2, &num_boxes));
  return ShapeFromShapeInput(c, 3, 0);
}

Status MultiLevelRoiAlignShape(InferenceContext* c) {
  int num_levels = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_levels", &num_levels));
  ShapeHandle features;
  DimensionHandle channels = c->UnknownDim();
  for (int l = 0; l < num_levels; ++l) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(l), 4, &features));
    TF_RETURN_IF_ERROR(c->Merge(channels, c->Dim(features, 3), &channels));
  }
  DimensionHandle num_boxes;
  TF_RETURN_IF_ERROR(NumBoxes(c, num_levels, num_levels + 1, num_levels + 2, &num_boxes));
  return PooledShape(c, num_boxes, channels);
}

Status MultiLevelRoiAlignGradShape(InferenceContext* c) {
  int num_levels = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_levels", &num_levels));
  DimensionHandle num_boxes;
  TF_RETURN_IF_ERROR(NumBoxes(c, 1, 2, 3, &num_boxes));
  for (int l = 0; l < num_levels; ++l) {
    TF_RETURN_IF_ERROR(ShapeFromShapeInput(c, 4 + l, l));
  }
  return Status();
}

#define KMR_COMMON_ATTRS                  \
  Attr("T: {float, bfloat16, half}")      \
      .Attr("pooled_height: int >= 1")    \
      .Attr("pooled_width: int >= 1")     \
      .Attr("sampling_ratio: int >= 0 = 0") \
      .Attr("aligned: bool = true")

REGISTER_OP("KmrRoiAlign")
    .Input("features: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Output("output: T")
    .KMR_COMMON_ATTRS.Attr("spatial_scale: float = 1.0")
    .SetShapeFn(RoiAlignShape)
    .Doc("RoIAlign on NHWC features; boxes are (y1, x1, y2, x2) in input pixels.");

REGISTER_OP("KmrRoiAlignGrad")
    .Input("grads: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("features_shape: int32")
    .Output("d_features: T")
    .KMR_COMMON_ATTRS.Attr("spatial_scale: float = 1.0")
    .SetShapeFn(RoiAlignGradShape)
    .Doc("Gradient of KmrRoiAlign with respect to its features (deterministic).");

REGISTER_OP("KmrMultiLevelRoiAlign")
    .Input("features: num_levels * T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("box_levels: int32")
    .Output("output: T")
    .KMR_COMMON_ATTRS.Attr("num_levels: int >= 1")
    .Attr("spatial_scales: list(float)")
    .SetShapeFn(MultiLevelRoiAlignShape)
    .Doc("RoIAlign of each box on features[box_levels[n]] at spatial_scales[box_levels[n]].");

REGISTER_OP("KmrMultiLevelRoiAlignGrad")
    .Input("grads: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("box_levels: int32")
    .Input("features_shapes: num_levels * int32")
    .Output("d_features: num_levels * T")
    .KMR_COMMON_ATTRS.Attr("num_levels: int >= 1")
    .Attr("spatial_scales: list(float)")
    .SetShapeFn(MultiLevelRoiAlignGradShape)
    .Doc("Gradient of KmrMultiLevelRoiAlign with respect to its features (deterministic).");

#undef KMR_COMMON_ATTRS

#define KMR_REGISTER(NAME, KERNEL, T) \
  REGISTER_KERNEL_BUILDER(            \
      Name(NAME).Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), KERNEL<T>)

#define KMR_REGISTER_ALL(T)                                              \
  KMR_REGISTER("KmrRoiAlign", RoiAlignOp, T);                            \
  KMR_REGISTER("KmrRoiAlignGrad", RoiAlignGradOp, T);                    \
  KMR_REGISTER("KmrMultiLevelRoiAlign", MultiLevelRoiAlignOp, T);        \
  KMR_REGISTER("KmrMultiLevelRoiAlignGrad", MultiLevelRoiAlignGradOp, T)

KMR_REGISTER_ALL(float);
KMR_REGISTER_ALL(Eigen::bfloat16);
KMR_REGISTER_ALL(Eigen::half);

#undef KMR_REGISTER_ALL
#undef KMR_REGISTER

}  // namespace kmr_roi_align
