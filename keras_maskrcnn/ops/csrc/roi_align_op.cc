// RoIAlign for NHWC feature maps: TensorFlow CPU custom ops for keras_maskrcnn.
//
//   KmrRoiAlign(features [B, H, W, C] T, boxes [N, 4] float32 (y1, x1, y2, x2),
//               box_indices [N] int32) -> output [N, PH, PW, C] T
//   KmrRoiAlignGrad(grads [N, PH, PW, C] T, boxes, box_indices,
//                   features_shape [4] int32) -> d_features [B, H, W, C] T
//
// T is float32, bfloat16 or float16; sums are accumulated in float32.
// Semantics follow torchvision.ops.roi_align (see docs in keras_maskrcnn/ops/custom_roi_align.py):
// box coordinates are scaled by `spatial_scale` (and shifted by -0.5 when `aligned`), each output
// bin averages a grid of bilinear samples, samples outside [-1, size] read zero.
//
// Bilinear weights factor into a y part and an x part, so for one box we build, per output row
// `ph`, the list of (feature row, summed weight) taps and, per output column `pw`, the list of
// (feature column, summed weight) taps. A bin is then sum_r sum_c wy[r] * wx[c] * f[r, c, :],
// an inner loop over contiguous channels. Taps hitting the same row/column are merged, which
// turns the 4 * S * S reads per bin into (typically) 3 x 3 reads.
//
// The gradient is parallelised over (image, channel block) units: each unit owns a disjoint
// slice of d_features and walks the boxes of its image in order, so the result is deterministic
// and needs no atomics.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Hot loops get AVX-512 / AVX2+FMA clones picked at load time; the baseline stays portable.
#define KMR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KMR_CLONES
#endif

namespace kmr_roi_align {

using tensorflow::int64;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

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
  float spatial_scale = 1.f;
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

inline int GridSize(int sampling_ratio, float extent, int pooled) {
  if (sampling_ratio > 0) return sampling_ratio;
  const float g = std::ceil(extent / static_cast<float>(pooled));
  if (!(g > 0.f)) return 0;  // empty or NaN box: the bins read zero
  return static_cast<int>(g);
}

// box: (y1, x1, y2, x2) in input pixels.
void BuildPlan(const float* box, const Params& p, int height, int width, BoxPlan* plan) {
  const float offset = p.aligned ? 0.5f : 0.f;
  const float y1 = box[0] * p.spatial_scale - offset;
  const float x1 = box[1] * p.spatial_scale - offset;
  const float y2 = box[2] * p.spatial_scale - offset;
  const float x2 = box[3] * p.spatial_scale - offset;
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
  BuildAxis(y1, bin_h, grid_h, p.pooled_h, height, &plan->y);
  BuildAxis(x1, bin_w, grid_w, p.pooled_w, width, &plan->x);
  plan->inv_count = 1.f / static_cast<float>(std::max(grid_h * grid_w, 1));
}

// ---------------------------------------------------------------------------------------------
// Inner loops over contiguous channels.

template <typename T>
inline void AxpyImpl(float w, const T* __restrict src, float* __restrict acc, int64 n) {
  for (int64 c = 0; c < n; ++c) acc[c] += w * ToFloat(src[c]);
}

KMR_CLONES void AxpyF32(float w, const float* __restrict src, float* __restrict acc, int64 n) {
  AxpyImpl(w, src, acc, n);
}
KMR_CLONES void AxpyBF16(float w, const Eigen::bfloat16* __restrict src, float* __restrict acc,
                         int64 n) {
  AxpyImpl(w, src, acc, n);
}
inline void Axpy(float w, const float* src, float* acc, int64 n) { AxpyF32(w, src, acc, n); }
inline void Axpy(float w, const Eigen::bfloat16* src, float* acc, int64 n) {
  AxpyBF16(w, src, acc, n);
}
inline void Axpy(float w, const Eigen::half* src, float* acc, int64 n) {
  AxpyImpl(w, src, acc, n);
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
void PoolBox(const BoxPlan& plan, const Params& p, const T* image, int64 width, int64 channels,
             float* acc, T* out) {
  for (int ph = 0; ph < p.pooled_h; ++ph) {
    for (int pw = 0; pw < p.pooled_w; ++pw) {
      std::fill(acc, acc + channels, 0.f);
      for (int ty = plan.y.begin[ph]; ty < plan.y.begin[ph + 1]; ++ty) {
        const Tap& row = plan.y.taps[ty];
        const T* row_ptr = image + static_cast<int64>(row.index) * width * channels;
        const float wy = row.weight * plan.inv_count;
        for (int tx = plan.x.begin[pw]; tx < plan.x.begin[pw + 1]; ++tx) {
          const Tap& col = plan.x.taps[tx];
          Axpy(wy * col.weight, row_ptr + static_cast<int64>(col.index) * channels, acc, channels);
        }
      }
      T* dst = out + (static_cast<int64>(ph) * p.pooled_w + pw) * channels;
      for (int64 c = 0; c < channels; ++c) dst[c] = FromFloat<T>(acc[c]);
    }
  }
}

Status ReadParams(OpKernelConstruction* ctx, Params* p) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_height", &p->pooled_h));
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_width", &p->pooled_w));
  TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scale", &p->spatial_scale));
  TF_RETURN_IF_ERROR(ctx->GetAttr("sampling_ratio", &p->sampling_ratio));
  TF_RETURN_IF_ERROR(ctx->GetAttr("aligned", &p->aligned));
  if (!(p->spatial_scale > 0.f) || !std::isfinite(p->spatial_scale)) {
    return tensorflow::errors::InvalidArgument("spatial_scale must be a positive finite float, got ",
                                               p->spatial_scale);
  }
  return Status();
}

// Checks boxes [N, 4] and box_indices [N] with every index in [0, batch).
Status CheckBoxes(const Tensor& boxes, const Tensor& box_indices, int64 batch) {
  if (boxes.dims() != 2 || boxes.dim_size(1) != 4) {
    return tensorflow::errors::InvalidArgument("boxes must be [N, 4], got ",
                                               boxes.shape().DebugString());
  }
  if (box_indices.dims() != 1 || box_indices.dim_size(0) != boxes.dim_size(0)) {
    return tensorflow::errors::InvalidArgument("box_indices must be [N] with N = ",
                                               boxes.dim_size(0), ", got ",
                                               box_indices.shape().DebugString());
  }
  const auto idx = box_indices.flat<int32_t>();
  for (int64 n = 0; n < idx.size(); ++n) {
    if (idx(n) < 0 || idx(n) >= batch) {
      return tensorflow::errors::InvalidArgument("box_indices[", n, "] = ", idx(n),
                                                 " is not in [0, ", batch, ")");
    }
  }
  return Status();
}

template <typename T>
class RoiAlignOp : public OpKernel {
 public:
  explicit RoiAlignOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    OP_REQUIRES(ctx, features.dims() == 4,
                tensorflow::errors::InvalidArgument("features must be [B, H, W, C], got ",
                                                    features.shape().DebugString()));
    const int64 batch = features.dim_size(0);
    const int64 height = features.dim_size(1);
    const int64 width = features.dim_size(2);
    const int64 channels = features.dim_size(3);
    OP_REQUIRES_OK(ctx, CheckBoxes(boxes, box_indices, batch));
    const int64 num_boxes = boxes.dim_size(0);

    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({num_boxes, params_.pooled_h, params_.pooled_w, channels}),
                            &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES(ctx, height > 0 && width > 0,
                tensorflow::errors::InvalidArgument("features must have H, W > 0, got ",
                                                    features.shape().DebugString()));

    const T* feat = features.flat<T>().data();
    const float* box_data = boxes.flat<float>().data();
    const int32_t* idx = box_indices.flat<int32_t>().data();
    T* out = output->flat<T>().data();
    const int64 image_size = height * width * channels;
    const int64 out_size = static_cast<int64>(params_.pooled_h) * params_.pooled_w * channels;
    const Params p = params_;

    auto work = [&](int64 begin, int64 end) {
      BoxPlan plan;
      std::vector<float> acc(channels);
      for (int64 n = begin; n < end; ++n) {
        BuildPlan(box_data + 4 * n, p, static_cast<int>(height), static_cast<int>(width), &plan);
        PoolBox(plan, p, feat + idx[n] * image_size, width, channels, acc.data(), out + n * out_size);
      }
    };
    // Rough cost of one box: about 9 taps of `channels` multiply-adds per bin.
    const int64 cost = 10 * out_size * 9 + 1000;
    ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(num_boxes, cost, work);
  }

 private:
  Params params_;
};

// ---------------------------------------------------------------------------------------------
// Backward.

// Adds the gradient of channels [c0, c0 + cw) of all boxes of one image into `acc`, a
// [H, W, cw] region with pixel stride `stride` floats.
template <typename T>
void ScatterImage(const std::vector<int64>& boxes_of_image, const std::vector<BoxPlan>& plans,
                  const Params& p, const T* grads, int64 channels, int64 c0, int64 cw,
                  int64 width, int64 stride, float* acc, float* gbuf) {
  const int64 out_size = static_cast<int64>(p.pooled_h) * p.pooled_w * channels;
  for (const int64 n : boxes_of_image) {
    const BoxPlan& plan = plans[n];
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      for (int pw = 0; pw < p.pooled_w; ++pw) {
        const T* g = grads + n * out_size + (static_cast<int64>(ph) * p.pooled_w + pw) * channels + c0;
        for (int64 c = 0; c < cw; ++c) gbuf[c] = ToFloat(g[c]);
        for (int ty = plan.y.begin[ph]; ty < plan.y.begin[ph + 1]; ++ty) {
          const Tap& row = plan.y.taps[ty];
          float* row_ptr = acc + static_cast<int64>(row.index) * width * stride;
          const float wy = row.weight * plan.inv_count;
          for (int tx = plan.x.begin[pw]; tx < plan.x.begin[pw + 1]; ++tx) {
            const Tap& col = plan.x.taps[tx];
            AxpyF32(wy * col.weight, gbuf, row_ptr + static_cast<int64>(col.index) * stride, cw);
          }
        }
      }
    }
  }
}

template <typename T>
class RoiAlignGradOp : public OpKernel {
 public:
  explicit RoiAlignGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadParams(ctx, &params_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    const Tensor& shape_t = ctx->input(3);
    OP_REQUIRES(ctx, shape_t.dims() == 1 && shape_t.NumElements() == 4,
                tensorflow::errors::InvalidArgument("features_shape must be [4], got ",
                                                    shape_t.shape().DebugString()));
    const auto shape = shape_t.flat<int32_t>();
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES(ctx, shape(i) >= 0,
                  tensorflow::errors::InvalidArgument("features_shape must be >= 0"));
    }
    const int64 batch = shape(0), height = shape(1), width = shape(2), channels = shape(3);
    OP_REQUIRES_OK(ctx, CheckBoxes(boxes, box_indices, batch));
    const int64 num_boxes = boxes.dim_size(0);
    const TensorShape expected({num_boxes, params_.pooled_h, params_.pooled_w, channels});
    OP_REQUIRES(ctx, grads.shape() == expected,
                tensorflow::errors::InvalidArgument("grads must be ", expected.DebugString(),
                                                    ", got ", grads.shape().DebugString()));

    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, height, width, channels}),
                                             &output));
    T* out = output->flat<T>().data();
    const int64 image_size = height * width * channels;
    if (output->NumElements() == 0) return;
    if (num_boxes == 0) {
      std::fill(out, out + output->NumElements(), FromFloat<T>(0.f));
      return;
    }

    const Params p = params_;
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const float* box_data = boxes.flat<float>().data();
    std::vector<BoxPlan> plans(num_boxes);
    workers->ParallelFor(num_boxes, 2000, [&](int64 begin, int64 end) {
      for (int64 n = begin; n < end; ++n) {
        BuildPlan(box_data + 4 * n, p, static_cast<int>(height), static_cast<int>(width), &plans[n]);
      }
    });
    std::vector<std::vector<int64>> boxes_of_image(batch);
    const int32_t* idx = box_indices.flat<int32_t>().data();
    for (int64 n = 0; n < num_boxes; ++n) boxes_of_image[idx[n]].push_back(n);

    // Channel blocks of >= 16 floats (a cache line), enough units to keep every thread busy.
    const int64 threads = std::max(1, workers->NumThreads());
    const int64 want_blocks = std::max<int64>(1, (4 * threads + batch - 1) / batch);
    int64 block = (channels + want_blocks - 1) / want_blocks;
    block = std::max<int64>(16, (block + 15) / 16 * 16);
    block = std::min(block, channels);
    const int64 num_blocks = (channels + block - 1) / block;
    const T* grad_data = grads.flat<T>().data();

    auto work = [&](int64 begin, int64 end) {
      std::vector<float> gbuf(block);
      std::vector<float> local;
      for (int64 unit = begin; unit < end; ++unit) {
        const int64 b = unit / num_blocks;
        const int64 c0 = (unit % num_blocks) * block;
        const int64 cw = std::min(block, channels - c0);
        T* dst = out + b * image_size + c0;
        float* acc;
        int64 stride;
        if constexpr (std::is_same<T, float>::value) {
          acc = dst;  // accumulate in place
          stride = channels;
          for (int64 px = 0; px < height * width; ++px) std::fill(acc + px * stride, acc + px * stride + cw, 0.f);
        } else {
          local.assign(height * width * cw, 0.f);
          acc = local.data();
          stride = cw;
        }
        ScatterImage(boxes_of_image[b], plans, p, grad_data, channels, c0, cw, width, stride, acc,
                     gbuf.data());
        if constexpr (!std::is_same<T, float>::value) {
          for (int64 px = 0; px < height * width; ++px) {
            for (int64 c = 0; c < cw; ++c) dst[px * channels + c] = FromFloat<T>(acc[px * cw + c]);
          }
        }
      }
    };
    const int64 per_unit = static_cast<int64>(num_boxes / std::max<int64>(batch, 1) + 1) *
                               p.pooled_h * p.pooled_w * block * 10 +
                           height * width * block;
    workers->ParallelFor(batch * num_blocks, per_unit, work);
  }

 private:
  Params params_;
};

// ---------------------------------------------------------------------------------------------
// Registration.

Status RoiAlignShape(InferenceContext* c) {
  ShapeHandle features, boxes, box_indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &box_indices));
  DimensionHandle unused, num_boxes;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(boxes, 0), c->Dim(box_indices, 0), &num_boxes));
  int pooled_h, pooled_w;
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &pooled_h));
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pooled_w));
  c->set_output(0, c->MakeShape({num_boxes, pooled_h, pooled_w, c->Dim(features, 3)}));
  return Status();
}

Status RoiAlignGradShape(InferenceContext* c) {
  ShapeHandle grads, boxes, box_indices, shape_vec, out;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &box_indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &shape_vec));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &unused));
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(shape_vec, 0), 4, &unused));
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &out));
  TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
  DimensionHandle channels;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(out, 3), c->Dim(grads, 3), &channels));
  TF_RETURN_IF_ERROR(c->ReplaceDim(out, 3, channels, &out));
  c->set_output(0, out);
  return Status();
}

REGISTER_OP("KmrRoiAlign")
    .Input("features: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Output("output: T")
    .Attr("T: {float, bfloat16, half}")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int >= 0 = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn(RoiAlignShape)
    .Doc("RoIAlign on NHWC features; boxes are (y1, x1, y2, x2) in input pixels.");

REGISTER_OP("KmrRoiAlignGrad")
    .Input("grads: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("features_shape: int32")
    .Output("d_features: T")
    .Attr("T: {float, bfloat16, half}")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int >= 0 = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn(RoiAlignGradShape)
    .Doc("Gradient of KmrRoiAlign with respect to its features (deterministic).");

#define KMR_REGISTER(T)                                                                     \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("KmrRoiAlign").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),            \
      RoiAlignOp<T>);                                                                       \
  REGISTER_KERNEL_BUILDER(Name("KmrRoiAlignGrad")                                           \
                              .Device(tensorflow::DEVICE_CPU)                               \
                              .TypeConstraint<T>("T"),                                \
                          RoiAlignGradOp<T>);

KMR_REGISTER(float);
KMR_REGISTER(Eigen::bfloat16);
KMR_REGISTER(Eigen::half);

#undef KMR_REGISTER

}  // namespace kmr_roi_align
