// The custom-call targets of nmr_jax, defined once for every platform: each target's
// signature (operands, attributes, results, in order) and the parsing of its shapes. The CPU
// handlers (cpu_ops.cc) and the CUDA ones (cuda_ops.cu, also compiled for the host) supply only
// their strategy, as functions GatherFacesImpl, ... that take the platform's contexts first.
//
// Shapes are checked by the Python layer (nmr_jax/_ffi.py) before any call is built; what is
// parsed here is the broadcast batch (batch.h) and the core sizes. Operand ids are the order of
// Broadcast::add, named per target so that kernels index their chunk of batch elements by name.
#pragma once

#include <cstdint>
#include <string>

#include "batch.h"
#include "layers.h"
#include "nmr_core.h"
#include "soft.h"
#include "xla/ffi/api/ffi.h"

namespace nmr {

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using S32Out = ffi::ResultBuffer<ffi::S32>;

inline int64_t dim(const ffi::AnyBuffer::Dimensions& dims, int from_end) {
  return dims[dims.size() - from_end];
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The error of a vertex index outside [0, V), whichever platform finds it.
inline ffi::Error bad_vertex_index(int64_t value, int64_t face, int64_t V) {
  return ffi::Error::InvalidArgument("nmr_jax: faces holds vertex index " + std::to_string(value) +
                                     " at face " + std::to_string(face) + ", outside [0, " +
                                     std::to_string(V) + ") (V = number of vertices)");
}

// nmr_gather_faces: vertices [*b, V, 3], faces [*b, F, 3] -> face_vertices [*b, F, 3, 3].
struct GatherShape {
  int vertices, faces, out;  // operand ids
  int64_t V, F;
  static ffi::Error parse(Broadcast& bc, GatherShape* s, const F32& vertices, const S32& faces, F32Out& out) {
    s->vertices = bc.add(vertices.dimensions(), 2);
    s->faces = bc.add(faces.dimensions(), 2);
    s->out = bc.add(out->dimensions(), 3);
    s->V = dim(vertices.dimensions(), 2);
    s->F = dim(faces.dimensions(), 2);
    return bc.finish();
  }
};

// nmr_scatter_faces: faces [*b, F, 3], grad_face_vertices [*b, F, 3, 3] -> grad_vertices [*b, V, 3].
struct ScatterShape {
  int faces, grad, out;
  int64_t V, F;
  static ffi::Error parse(Broadcast& bc, ScatterShape* s, const S32& faces, const F32& grad, F32Out& out) {
    s->faces = bc.add(faces.dimensions(), 2);
    s->grad = bc.add(grad.dimensions(), 3);
    s->out = bc.add(out->dimensions(), 2);
    s->V = dim(out->dimensions(), 2);
    s->F = dim(faces.dimensions(), 2);
    return bc.finish();
  }
};

// nmr_rasterize: face_vertices [*b, F, 3, 3] -> maps [*b, H, W] (face_index, depth), [*b, H, W, 3].
struct RasterShape {
  int fv, maps;
  int64_t F, P;
  static ffi::Error parse(Broadcast& bc, RasterShape* s, const F32& face_vertices, S32Out& face_index) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->maps = bc.add(face_index->dimensions(), 2);
    s->F = dim(face_vertices.dimensions(), 3);
    s->P = dim(face_index->dimensions(), 2) * dim(face_index->dimensions(), 1);
    return bc.finish();
  }
};

// nmr_sample_textures: face_vertices, textures [*b, F, T, T, T, 3], pixel maps -> rgb [*b, H, W, 3].
struct SampleShape {
  int fv, tex, pix, out;
  int64_t F, P, cube;  // cube: floats of one face's texture
  int T;
  static ffi::Error parse(Broadcast& bc, SampleShape* s, const F32& face_vertices, const F32& textures,
                          const S32& face_index, F32Out& rgb) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->tex = bc.add(textures.dimensions(), 5);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->out = bc.add(rgb->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->T = static_cast<int>(dim(textures.dimensions(), 2));
    s->cube = static_cast<int64_t>(s->T) * s->T * s->T * 3;
    s->P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
    return bc.finish();
  }
};

// nmr_sample_textures_bwd: face_vertices, pixel maps, grad_rgb -> grad_textures [*b, F, T, T, T, 3].
struct SampleBwdShape {
  int fv, pix, grad, out;
  int64_t F, P, cube;
  int T;
  static ffi::Error parse(Broadcast& bc, SampleBwdShape* s, const F32& face_vertices, const S32& face_index,
                          const F32& grad_rgb, F32Out& grad_textures) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->grad = bc.add(grad_rgb.dimensions(), 3);
    s->out = bc.add(grad_textures->dimensions(), 5);
    s->F = dim(face_vertices.dimensions(), 3);
    s->T = static_cast<int>(dim(grad_textures->dimensions(), 2));
    s->cube = static_cast<int64_t>(s->T) * s->T * s->T * 3;
    s->P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
    return bc.finish();
  }
};

// nmr_kato_bwd: face_vertices, face_index, image and grad_image [*b, H, W, C] -> grad_face_vertices.
struct KatoShape {
  int fv, pix, image, grad, out;
  int64_t F, P;
  int H, W, C;
  static ffi::Error parse(Broadcast& bc, KatoShape* s, const F32& face_vertices, const S32& face_index,
                          const F32& image, const F32& grad_image, F32Out& out) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->image = bc.add(image.dimensions(), 3);
    s->grad = bc.add(grad_image.dimensions(), 3);
    s->out = bc.add(out->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->H = static_cast<int>(dim(face_index.dimensions(), 2));
    s->W = static_cast<int>(dim(face_index.dimensions(), 1));
    s->C = static_cast<int>(dim(image.dimensions(), 1));
    s->P = static_cast<int64_t>(s->H) * s->W;
    return bc.finish();
  }
};

// nmr_fragments_bwd: face_vertices, pixel maps, grad_weights [*b, H, W, 3], grad_bary [*b, H, W, 3],
// grad_depth [*b, H, W] -> grad_face_vertices.
struct FragmentsBwdShape {
  int fv, pix, grad_w, grad_bary, grad_depth, out;
  int64_t F, P;
  int H, W;
  bool has_w, has_bary, has_depth;  // an empty gradient operand: no map reads it (zero)
  static ffi::Error parse(Broadcast& bc, FragmentsBwdShape* s, const F32& face_vertices,
                          const S32& face_index, const F32& grad_weights, const F32& grad_bary,
                          const F32& grad_depth, F32Out& out) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->grad_w = bc.add(grad_weights.dimensions(), 3);
    s->grad_bary = bc.add(grad_bary.dimensions(), 3);
    s->grad_depth = bc.add(grad_depth.dimensions(), 2);
    s->out = bc.add(out->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->H = static_cast<int>(dim(face_index.dimensions(), 2));
    s->W = static_cast<int>(dim(face_index.dimensions(), 1));
    s->P = static_cast<int64_t>(s->H) * s->W;
    s->has_w = grad_weights.element_count() != 0;
    s->has_bary = grad_bary.element_count() != 0;
    s->has_depth = grad_depth.element_count() != 0;
    return bc.finish();
  }
};

// nmr_interpolate: attributes [*b, F, 3, C], face_index [*b, H, W], bary [*b, H, W, 3] -> [*b, H, W, C].
struct InterpolateShape {
  int attr, pix, bary, out;
  int64_t F, P;
  int C;
  static ffi::Error parse(Broadcast& bc, InterpolateShape* s, const F32& attributes, const S32& face_index,
                          const F32& bary, F32Out& out) {
    s->attr = bc.add(attributes.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->bary = bc.add(bary.dimensions(), 3);
    s->out = bc.add(out->dimensions(), 3);
    s->F = dim(attributes.dimensions(), 3);
    s->C = static_cast<int>(dim(attributes.dimensions(), 1));
    s->P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
    return bc.finish();
  }
};

// nmr_interpolate_bwd: attributes, face_index, bary, grad_out [*b, H, W, C] -> grad_attributes
// [*b, F, 3, C], grad_bary [*b, H, W, 3].
struct InterpolateBwdShape {
  int attr, pix, bary, grad, out_attr, out_bary;
  int64_t F, P;
  int C;
  static ffi::Error parse(Broadcast& bc, InterpolateBwdShape* s, const F32& attributes, const S32& face_index,
                          const F32& bary, const F32& grad, F32Out& grad_attributes, F32Out& grad_bary) {
    s->attr = bc.add(attributes.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 2);
    s->bary = bc.add(bary.dimensions(), 3);
    s->grad = bc.add(grad.dimensions(), 3);
    s->out_attr = bc.add(grad_attributes->dimensions(), 3);
    s->out_bary = bc.add(grad_bary->dimensions(), 3);
    s->F = dim(attributes.dimensions(), 3);
    s->C = static_cast<int>(dim(attributes.dimensions(), 1));
    s->P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
    return bc.finish();
  }
};

// nmr_sample_image: image [*b, Ht, Wt, C], uv [*b, H, W, 2] -> [*b, H, W, C].
struct SampleImageShape {
  int image, uv, out;
  int64_t texels, P;
  int Ht, Wt, C;
  static ffi::Error parse(Broadcast& bc, SampleImageShape* s, const F32& image, const F32& uv, F32Out& out) {
    s->image = bc.add(image.dimensions(), 3);
    s->uv = bc.add(uv.dimensions(), 3);
    s->out = bc.add(out->dimensions(), 3);
    s->Ht = static_cast<int>(dim(image.dimensions(), 3));
    s->Wt = static_cast<int>(dim(image.dimensions(), 2));
    s->C = static_cast<int>(dim(image.dimensions(), 1));
    s->texels = static_cast<int64_t>(s->Ht) * s->Wt;
    s->P = dim(uv.dimensions(), 3) * dim(uv.dimensions(), 2);
    return bc.finish();
  }
};

// nmr_sample_image_bwd: image, uv, grad_out [*b, H, W, C] -> grad_image [*b, Ht, Wt, C], grad_uv
// [*b, H, W, 2].
struct SampleImageBwdShape {
  int image, uv, grad, out_image, out_uv;
  int64_t texels, P;
  int Ht, Wt, C;
  static ffi::Error parse(Broadcast& bc, SampleImageBwdShape* s, const F32& image, const F32& uv,
                          const F32& grad, F32Out& grad_image, F32Out& grad_uv) {
    s->image = bc.add(image.dimensions(), 3);
    s->uv = bc.add(uv.dimensions(), 3);
    s->grad = bc.add(grad.dimensions(), 3);
    s->out_image = bc.add(grad_image->dimensions(), 3);
    s->out_uv = bc.add(grad_uv->dimensions(), 3);
    s->Ht = static_cast<int>(dim(image.dimensions(), 3));
    s->Wt = static_cast<int>(dim(image.dimensions(), 2));
    s->C = static_cast<int>(dim(image.dimensions(), 1));
    s->texels = static_cast<int64_t>(s->Ht) * s->Wt;
    s->P = dim(uv.dimensions(), 3) * dim(uv.dimensions(), 2);
    return bc.finish();
  }
};

// nmr_soft_silhouettes: face_vertices [*b, F, 3, 3], sigma [*b] -> alpha, acc, count [*b, H, W].
struct SoftShape {
  int fv, sigma, maps;
  int64_t F, P;
  static ffi::Error parse(Broadcast& bc, SoftShape* s, const F32& face_vertices, const F32& sigma,
                          F32Out& alpha) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->sigma = bc.add(sigma.dimensions(), 0);
    s->maps = bc.add(alpha->dimensions(), 2);
    s->F = dim(face_vertices.dimensions(), 3);
    s->P = dim(alpha->dimensions(), 2) * dim(alpha->dimensions(), 1);
    return bc.finish();
  }
};

// nmr_soft_silhouettes_bwd: face_vertices, sigma, acc and count, grad_alpha [*b, H, W] -> grad
// [*b, F, 10]: each face's 9 vertex floats, then its part of sigma's gradient.
// nmr_soft_silhouettes_jvp, its transpose, has the same operands but the linear one and the
// result swapped: tangent [*b, F, 10] (the faces' vertices', then sigma's) -> alpha's [*b, H, W].
struct SoftBwdShape {
  int fv, sigma, acc, count, linear, out;  // linear: grad_alpha, or the tangent
  int64_t F, P;
  static ffi::Error parse(Broadcast& bc, SoftBwdShape* s, const F32& face_vertices, const F32& sigma,
                          const F32& acc, const S32& count, const F32& linear, F32Out& out) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->sigma = bc.add(sigma.dimensions(), 0);
    s->acc = bc.add(acc.dimensions(), 2);
    s->count = bc.add(count.dimensions(), 2);
    s->linear = bc.add(linear.dimensions(), 2);
    s->out = bc.add(out->dimensions(), 2);
    s->F = dim(face_vertices.dimensions(), 3);
    s->P = dim(acc.dimensions(), 2) * dim(acc.dimensions(), 1);
    return bc.finish();
  }
};

// The attributes of the soft silhouette targets, as the core's parameters.
inline SoftParams soft_params(int32_t height, int32_t width, float near, float far, float threshold,
                              float reach, int32_t distribution, int32_t aggregation) {
  return SoftParams{height,
                    width,
                    near,
                    far,
                    threshold,
                    reach,
                    static_cast<Distribution>(distribution),
                    static_cast<Aggregation>(aggregation)};
}

// nmr_soft_rgb: face_vertices [*b, F, 3, 3], textures [*b, F, T, T, T, 3], bary_map [*b, F or 0, 3,
// 3] (each face's barycentric map, texture_coords; 0 rows: none), sigma_gamma [*b, 2] -> out [*b,
// H, W, 5]: rgb, then the softmax's m and s (soft.h).
struct ColorShape {
  int fv, tex, map, params, out;
  int64_t F, P, cube;
  int T;
  bool mapped;
  static ffi::Error parse(Broadcast& bc, ColorShape* s, const F32& face_vertices, const F32& textures,
                          const F32& bary_map, const F32& sigma_gamma, F32Out& out) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->tex = bc.add(textures.dimensions(), 5);
    s->map = bc.add(bary_map.dimensions(), 3);
    s->mapped = dim(bary_map.dimensions(), 3) > 0;
    s->params = bc.add(sigma_gamma.dimensions(), 1);
    s->out = bc.add(out->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->T = static_cast<int>(dim(textures.dimensions(), 2));
    s->cube = static_cast<int64_t>(s->T) * s->T * s->T * 3;
    s->P = dim(out->dimensions(), 3) * dim(out->dimensions(), 2);
    return bc.finish();
  }
};

// nmr_soft_rgb_bwd: face_vertices, textures, bary_map, sigma_gamma, out, grad_rgb [*b, H, W, 3] ->
// grad [*b, F, kColorGradFloats + T^3 3]: each face's 9 vertex floats, its parts of sigma's and
// gamma's gradients, its map's gradient (0 without a map), and its cube's gradient.
// nmr_soft_rgb_jvp, its transpose, has the same operands but the linear one and the result
// swapped: tangent [*b, F, kColorGradFloats + T^3 3] (laid out as grad) -> rgb's [*b, H, W, 3].
struct ColorBwdShape {
  int fv, tex, map, params, out, linear, result;  // linear: grad_rgb, or the tangent
  int64_t F, P, cube;
  int T;
  bool mapped;
  static ffi::Error parse(Broadcast& bc, ColorBwdShape* s, const F32& face_vertices, const F32& textures,
                          const F32& bary_map, const F32& sigma_gamma, const F32& out, const F32& linear,
                          F32Out& result) {
    // All operands have the same batch rank (nmr_jax/_ffi.py pads them): the per-face one of the
    // linear operand and the result has core rank 2, the per-pixel one 3.
    const auto batch_rank = static_cast<int>(face_vertices.dimensions().size()) - 3;
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->tex = bc.add(textures.dimensions(), 5);
    s->map = bc.add(bary_map.dimensions(), 3);
    s->mapped = dim(bary_map.dimensions(), 3) > 0;
    s->params = bc.add(sigma_gamma.dimensions(), 1);
    s->out = bc.add(out.dimensions(), 3);
    s->linear = bc.add(linear.dimensions(), static_cast<int>(linear.dimensions().size()) - batch_rank);
    s->result = bc.add(result->dimensions(), static_cast<int>(result->dimensions().size()) - batch_rank);
    s->F = dim(face_vertices.dimensions(), 3);
    s->T = static_cast<int>(dim(textures.dimensions(), 2));
    s->cube = static_cast<int64_t>(s->T) * s->T * s->T * 3;
    s->P = dim(out.dimensions(), 3) * dim(out.dimensions(), 2);
    return bc.finish();
  }
};

// The attributes of the soft colour targets, as the core's parameters.
inline ColorParams color_params(int32_t height, int32_t width, float near, float far, float threshold,
                                float reach, int32_t distribution, int T, float eps, float bg_r, float bg_g,
                                float bg_b) {
  return ColorParams{soft_params(height, width, near, far, threshold, reach, distribution, 0),
                     Texture{T, eps},
                     {bg_r, bg_g, bg_b}};
}

}  // namespace nmr

// The opening of every handler: declares `bc`, the broadcast batch, and `s`, the target's Shape
// parsed from its buffers (in the binding's order), and returns the error of buffers whose batch
// dimensions do not broadcast.
#define NMR_PARSE(Shape, ...) \
  ::nmr::Broadcast bc;        \
  ::nmr::Shape s;             \
  if (auto err = ::nmr::Shape::parse(bc, &s, __VA_ARGS__); err.failure()) return err

// The handler symbols Nmr<Target><suffix> of one platform, e.g. NmrRasterizeCpu, binding the
// platform's contexts (CONTEXTS, e.g. `.Ctx<ffi::ThreadPool>()`) and then each target's operands,
// attributes and results; impls <Target>Impl take them in that order.
// The soft targets' attributes (soft.py's _Config.attrs and _ColorConfig.attrs): the image size and
// the rule's, then the silhouettes' aggregation, or the colours' texture clamp and background.
#define NMR_SOFT_ATTRS                                                                          \
  .Attr<int32_t>("height")                                                                      \
      .Attr<int32_t>("width")                                                                   \
      .Attr<float>("near")                                                                      \
      .Attr<float>("far")                                                                       \
      .Attr<float>("threshold")                                                                 \
      .Attr<float>("reach")                                              /* -F^-1(threshold) */ \
      .Attr<int32_t>("distribution")                                     /* nmr::Distribution */
#define NMR_SILHOUETTE_ATTRS NMR_SOFT_ATTRS.Attr<int32_t>("aggregation") /* nmr::Aggregation */
#define NMR_COLOR_ATTRS                               \
  NMR_SOFT_ATTRS                                      \
      .Attr<float>("eps")  /* texture clamp margin */ \
      .Attr<float>("bg_r") /* background colour */    \
      .Attr<float>("bg_g")                            \
      .Attr<float>("bg_b")

#define NMR_DEFINE_HANDLERS(SUFFIX, CONTEXTS) NMR_DEFINE_HANDLERS_(SUFFIX, CONTEXTS)
#define NMR_DEFINE_HANDLERS_(SUFFIX, CONTEXTS)                                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrGatherFaces##SUFFIX, GatherFacesImpl,                                   \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()        /* vertices [*b, V, 3] */                    \
                                    .Arg<::nmr::S32>()        /* faces [*b, F, 3] */                       \
                                    .Attr<int32_t>("checked") /* 1: faces known to be in [0, V) */         \
                                    .Ret<::nmr::F32>()        /* face_vertices [*b, F, 3, 3] */            \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrScatterFaces##SUFFIX, ScatterFacesImpl,                                 \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::S32>() /* faces [*b, F, 3] */                              \
                                    .Arg<::nmr::F32>() /* grad_face_vertices [*b, F, 3, 3] */              \
                                    .Ret<::nmr::F32>() /* grad_vertices [*b, V, 3] */                      \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrRasterize##SUFFIX, RasterizeImpl,                                       \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3], NDC x, y, view z */ \
                                    .Attr<int32_t>("height")                                               \
                                    .Attr<int32_t>("width")                                                \
                                    .Attr<float>("near")                                                   \
                                    .Attr<float>("far")                                                    \
                                    .Ret<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Ret<::nmr::F32>() /* weights [*b, H, W, 3] */                         \
                                    .Ret<::nmr::F32>() /* depth [*b, H, W] */                              \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleTextures##SUFFIX, SampleTexturesImpl,                             \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */                   \
                                    .Arg<::nmr::F32>() /* textures [*b, F, T, T, T, 3] */                  \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* weights [*b, H, W, 3] */                         \
                                    .Arg<::nmr::F32>() /* depth [*b, H, W] */                              \
                                    .Attr<float>("eps")                                                    \
                                    .Ret<::nmr::F32>() /* rgb [*b, H, W, 3] */                             \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleTexturesBwd##SUFFIX, SampleTexturesBwdImpl,                       \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */                   \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* weights [*b, H, W, 3] */                         \
                                    .Arg<::nmr::F32>() /* depth [*b, H, W] */                              \
                                    .Arg<::nmr::F32>() /* grad_rgb [*b, H, W, 3] */                        \
                                    .Attr<float>("eps")                                                    \
                                    .Ret<::nmr::F32>() /* grad_textures [*b, F, T, T, T, 3] */             \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrKatoBwd##SUFFIX, KatoBwdImpl,                                           \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */                   \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* image [*b, H, W, C], rgb and/or alpha */         \
                                    .Arg<::nmr::F32>() /* grad_image [*b, H, W, C] */                      \
                                    .Attr<float>("eps")                                                    \
                                    .Ret<::nmr::F32>() /* grad_face_vertices [*b, F, 3, 3] */              \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrFragmentsBwd##SUFFIX, FragmentsBwdImpl,                                 \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */                   \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* weights [*b, H, W, 3] */                         \
                                    .Arg<::nmr::F32>() /* depth [*b, H, W] */                              \
                                    .Arg<::nmr::F32>() /* grad_weights [*b, H, W, 3] */                    \
                                    .Arg<::nmr::F32>() /* grad_bary [*b, H, W, 3] */                       \
                                    .Arg<::nmr::F32>() /* grad_depth [*b, H, W] */                         \
                                    .Ret<::nmr::F32>() /* grad_face_vertices [*b, F, 3, 3] */              \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrInterpolate##SUFFIX, InterpolateImpl,                                   \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* attributes [*b, F, 3, C] per face corner */      \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* bary [*b, H, W, 3] */                            \
                                    .Ret<::nmr::F32>() /* out [*b, H, W, C], 0 on background */            \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrInterpolateBwd##SUFFIX, InterpolateBwdImpl,                             \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* attributes [*b, F, 3, C] */                      \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W] */                         \
                                    .Arg<::nmr::F32>() /* bary [*b, H, W, 3] */                            \
                                    .Arg<::nmr::F32>() /* grad_out [*b, H, W, C] */                        \
                                    .Ret<::nmr::F32>() /* grad_attributes [*b, F, 3, C] */                 \
                                    .Ret<::nmr::F32>() /* grad_bary [*b, H, W, 3] */                       \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleImage##SUFFIX, SampleImageImpl,                                   \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()         /* image [*b, Ht, Wt, C] */                 \
                                    .Arg<::nmr::F32>()         /* uv [*b, H, W, 2] */                      \
                                    .Attr<int32_t>("bilinear") /* 0: nearest texel */                      \
                                    .Attr<int32_t>("wrap")     /* 0: clamp to the edge texels */           \
                                    .Ret<::nmr::F32>()         /* out [*b, H, W, C] */                     \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleImageBwd##SUFFIX, SampleImageBwdImpl,                             \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* image [*b, Ht, Wt, C] */                         \
                                    .Arg<::nmr::F32>() /* uv [*b, H, W, 2] */                              \
                                    .Arg<::nmr::F32>() /* grad_out [*b, H, W, C] */                        \
                                    .Attr<int32_t>("bilinear")                                             \
                                    .Attr<int32_t>("wrap")                                                 \
                                    .Ret<::nmr::F32>() /* grad_image [*b, Ht, Wt, C] */                    \
                                    .Ret<::nmr::F32>() /* grad_uv [*b, H, W, 2] */                         \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftSilhouettes##SUFFIX, SoftSilhouettesImpl,                           \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */                   \
                                    .Arg<::nmr::F32>() /* sigma [*b] */                                    \
                                NMR_SILHOUETTE_ATTRS                                                       \
                                    .Ret<::nmr::F32>() /* alpha [*b, H, W] */                              \
                                    .Ret<::nmr::F32>() /* acc [*b, H, W], see nmr::soft_init */            \
                                    .Ret<::nmr::S32>() /* count [*b, H, W] */                              \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftSilhouettesBwd##SUFFIX, SoftSilhouettesBwdImpl,                     \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()                 /* face_vertices [*b, F, 3, 3] */   \
                                    .Arg<::nmr::F32>()                 /* sigma [*b] */                    \
                                    .Arg<::nmr::F32>()                 /* acc [*b, H, W] */                \
                                    .Arg<::nmr::S32>()                 /* count [*b, H, W] */              \
                                    .Arg<::nmr::F32>()                 /* grad_alpha [*b, H, W] */         \
                                NMR_SILHOUETTE_ATTRS.Ret<::nmr::F32>() /* grad [*b, F, 10] */              \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftSilhouettesJvp##SUFFIX, SoftSilhouettesJvpImpl,                     \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()                 /* face_vertices [*b, F, 3, 3] */   \
                                    .Arg<::nmr::F32>()                 /* sigma [*b] */                    \
                                    .Arg<::nmr::F32>()                 /* acc [*b, H, W] */                \
                                    .Arg<::nmr::S32>()                 /* count [*b, H, W] */              \
                                    .Arg<::nmr::F32>()                 /* tangent [*b, F, 10] */           \
                                NMR_SILHOUETTE_ATTRS.Ret<::nmr::F32>() /* alpha tangent [*b, H, W] */      \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftRgb##SUFFIX, SoftRgbImpl,                                           \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()            /* face_vertices [*b, F, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* textures [*b, F, T, T, T, 3] */       \
                                    .Arg<::nmr::F32>()            /* bary_map [*b, F or 0, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* sigma_gamma [*b, 2] */                \
                                NMR_COLOR_ATTRS.Ret<::nmr::F32>() /* out [*b, H, W, 5]: rgb, m, s */       \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftRgbBwd##SUFFIX, SoftRgbBwdImpl,                                     \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()            /* face_vertices [*b, F, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* textures [*b, F, T, T, T, 3] */       \
                                    .Arg<::nmr::F32>()            /* bary_map [*b, F or 0, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* sigma_gamma [*b, 2] */                \
                                    .Arg<::nmr::F32>()            /* out [*b, H, W, 5] */                  \
                                    .Arg<::nmr::F32>()            /* grad_rgb [*b, H, W, 3] */             \
                                NMR_COLOR_ATTRS.Ret<::nmr::F32>() /* grad [*b, F, 20 + T^3 3] */           \
  );                                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSoftRgbJvp##SUFFIX, SoftRgbJvpImpl,                                     \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                           \
                                    .Arg<::nmr::F32>()            /* face_vertices [*b, F, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* textures [*b, F, T, T, T, 3] */       \
                                    .Arg<::nmr::F32>()            /* bary_map [*b, F or 0, 3, 3] */        \
                                    .Arg<::nmr::F32>()            /* sigma_gamma [*b, 2] */                \
                                    .Arg<::nmr::F32>()            /* out [*b, H, W, 5] */                  \
                                    .Arg<::nmr::F32>()            /* tangent [*b, F, 20 + T^3 3] */        \
                                NMR_COLOR_ATTRS.Ret<::nmr::F32>() /* rgb tangent [*b, H, W, 3] */          \
  )

// The targets of the layered rasterizer (nr.rasterize_layers), defined as above.
namespace nmr {

// nmr_rasterize_layers: face_vertices [*b, F, 3, 3] -> face_index [*b, H, W, K] (-1 in empty slots),
// bary, bary_screen [*b, H, W, K, 3], depth, dist [*b, H, W, K]; top row first (y = +1), unlike
// the other targets' maps.
struct LayersShape {
  int fv, maps;
  int64_t F, P;
  int H, W, K;
  static ffi::Error parse(Broadcast& bc, LayersShape* s, const F32& face_vertices, S32Out& face_index) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->maps = bc.add(face_index->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->H = static_cast<int>(dim(face_index->dimensions(), 3));
    s->W = static_cast<int>(dim(face_index->dimensions(), 2));
    s->K = static_cast<int>(dim(face_index->dimensions(), 1));
    s->P = static_cast<int64_t>(s->H) * s->W;
    return bc.finish();
  }
};

// nmr_layers_bwd: face_vertices, face_index [*b, H, W, K], the gradients of bary_screen and bary
// [*b, H, W, K, 3], depth and dist [*b, H, W, K] (each empty when zero) -> grad_face_vertices.
struct LayersBwdShape {
  int fv, pix, g_ws, g_bary, g_depth, g_dist, out;
  int64_t F, P;
  int H, W, K;
  bool has_ws, has_bary, has_depth, has_dist;
  static ffi::Error parse(Broadcast& bc, LayersBwdShape* s, const F32& face_vertices, const S32& face_index,
                          const F32& grad_bary_screen, const F32& grad_bary, const F32& grad_depth,
                          const F32& grad_dist, F32Out& out) {
    s->fv = bc.add(face_vertices.dimensions(), 3);
    s->pix = bc.add(face_index.dimensions(), 3);
    s->g_ws = bc.add(grad_bary_screen.dimensions(), 4);
    s->g_bary = bc.add(grad_bary.dimensions(), 4);
    s->g_depth = bc.add(grad_depth.dimensions(), 3);
    s->g_dist = bc.add(grad_dist.dimensions(), 3);
    s->out = bc.add(out->dimensions(), 3);
    s->F = dim(face_vertices.dimensions(), 3);
    s->H = static_cast<int>(dim(face_index.dimensions(), 3));
    s->W = static_cast<int>(dim(face_index.dimensions(), 2));
    s->K = static_cast<int>(dim(face_index.dimensions(), 1));
    s->P = static_cast<int64_t>(s->H) * s->W;
    s->has_ws = grad_bary_screen.element_count() != 0;
    s->has_bary = grad_bary.element_count() != 0;
    s->has_depth = grad_depth.element_count() != 0;
    s->has_dist = grad_dist.element_count() != 0;
    return bc.finish();
  }
  // The gradient maps of one batch element (`at`: each operand's batch element, by id) from the
  // operands' data `base`; null where an operand is empty.
  NMR_HD LayerGradMaps element(const LayerGradMaps& base, const int64_t* at) const {
    const int64_t PK = P * K;
    return LayerGradMaps{has_ws ? base.bary_screen + at[g_ws] * PK * 3 : nullptr,
                         has_bary ? base.bary + at[g_bary] * PK * 3 : nullptr,
                         has_depth ? base.depth + at[g_depth] * PK : nullptr,
                         has_dist ? base.dist + at[g_dist] * PK : nullptr};
  }
};

}  // namespace nmr

// The layered rasterizer's handler symbols (NmrRasterizeLayers<suffix>, NmrLayersBwd<suffix>), as
// NMR_DEFINE_HANDLERS defines the others.
#define NMR_DEFINE_LAYER_HANDLERS(SUFFIX, CONTEXTS) NMR_DEFINE_LAYER_HANDLERS_(SUFFIX, CONTEXTS)
#define NMR_DEFINE_LAYER_HANDLERS_(SUFFIX, CONTEXTS)                                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrRasterizeLayers##SUFFIX, RasterizeLayersImpl,                   \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                   \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */           \
                                    .Attr<float>("near")                                           \
                                    .Attr<float>("far")                                            \
                                    .Attr<float>("blur_radius") /* squared NDC distance */         \
                                    .Ret<::nmr::S32>()          /* face_index [*b, H, W, K] */     \
                                    .Ret<::nmr::F32>()          /* bary [*b, H, W, K, 3] */        \
                                    .Ret<::nmr::F32>()          /* bary_screen [*b, H, W, K, 3] */ \
                                    .Ret<::nmr::F32>()          /* depth [*b, H, W, K] */          \
                                    .Ret<::nmr::F32>()          /* dist [*b, H, W, K] */           \
  );                                                                                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrLayersBwd##SUFFIX, LayersBwdImpl,                               \
                                ::xla::ffi::Ffi::Bind() CONTEXTS                                   \
                                    .Arg<::nmr::F32>() /* face_vertices [*b, F, 3, 3] */           \
                                    .Arg<::nmr::S32>() /* face_index [*b, H, W, K] */              \
                                    .Arg<::nmr::F32>() /* grad_bary_screen [*b, H, W, K, 3] */     \
                                    .Arg<::nmr::F32>() /* grad_bary [*b, H, W, K, 3] */            \
                                    .Arg<::nmr::F32>() /* grad_depth [*b, H, W, K] */              \
                                    .Arg<::nmr::F32>() /* grad_dist [*b, H, W, K] */               \
                                    .Ret<::nmr::F32>() /* grad_face_vertices [*b, F, 3, 3] */      \
  )
