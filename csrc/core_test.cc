// Host unit test of nmr_core.h, built and run by tests/test_core.py (no framework, no XLA).
//
// 1. The GPU's two-pass rasterizer (pass 1: per-pixel minimum of fragment_key over every fragment
//    of every face, tile by tile of each face's box over its row spans, in any order; pass 2:
//    resolve_pixel) against draw_face (every pixel of the box tested) in increasing face order,
//    the CPU's way, on random meshes with exact depth ties, duplicated faces, off-grid vertices and
//    non-square images: face ids, weights and depths must be bit for bit equal.
// 2. row_span against the edge test of every pixel of a row, on faces with huge coordinates and
//    nearly horizontal edges (where its estimate of an edge's crossing is far off).
// 3. fragment_key orders depths as floats do, with -0.0 equal to +0.0.
// 4. The signed squared distance from a pixel centre to a face in NDC (nearest_edge, signed_dist2)
//    against a double-precision computation from the NDC vertices and the closest of 300 points
//    sampled on the boundary, its sign against covers, and its gradient (nearest_edge_grad)
//    against central differences of the double computation.
// 5. The layered rasterizer's per-pixel lists (layers.h): insert_layer_key, the GPU's, with the
//    fragments inserted in random orders and by 4 threads at once (a compare-and-swap minimum),
//    against insert_layer in increasing face order, the CPU's; with many exact depth ties.
// Prints one line per check and exits non-zero on the first mismatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "layers.h"
#include "nmr_core.h"

namespace {

int failures = 0;

void check(bool ok, const char* what, int mesh) {
  if (ok) return;
  if (failures++ < 10) std::printf("FAIL mesh %d: %s\n", mesh, what);
}

// Random faces as tests/_helpers.py random_faces makes them: x, y on a 1/8-pixel grid reaching a
// little beyond the image, depths in [0.05, 5); some faces repeated (exact ties), half the meshes
// moved off the grid, and some faces given one depth so that overlaps tie exactly.
std::vector<float> random_mesh(std::mt19937& rng, int n_faces, int height, int width, bool off_grid) {
  std::vector<float> fv(9 * n_faces);
  std::uniform_real_distribution<float> depth(0.05f, 5.f), jitter(-0.01f, 0.01f);
  for (int f = 0; f < n_faces; ++f) {
    const int n[2] = {width, height};
    for (int k = 0; k < 3; ++k) {
      for (int a = 0; a < 2; ++a) {
        std::uniform_int_distribution<int> grid(-(9 * n[a]) / 2, (9 * n[a]) / 2);
        float v = static_cast<float>(grid(rng)) / (4.f * n[a]);
        if (off_grid) v += jitter(rng);
        fv[9 * f + 3 * k + a] = v;
      }
      fv[9 * f + 3 * k + 2] = depth(rng);
    }
  }
  std::uniform_int_distribution<int> pick(0, n_faces - 1);
  for (int d = 0; d < n_faces / 5; ++d) {  // duplicates of earlier or later faces
    const int a = pick(rng), b = pick(rng);
    std::memcpy(&fv[9 * a], &fv[9 * b], 9 * sizeof(float));
  }
  for (int f = 0; f < n_faces; f += 3)  // flat faces at one shared depth
    for (int k = 0; k < 3; ++k) fv[9 * f + 3 * k + 2] = 1.f;
  return fv;
}

struct Image {
  std::vector<int32_t> face_index;
  std::vector<float> weights, depth;
  explicit Image(int64_t P) : face_index(P, -1), weights(3 * P, 0.f), depth(P, 0.f) {}
  nmr::Maps maps() { return {face_index.data(), weights.data(), depth.data()}; }
};

void check_two_pass_rasterizer(int mesh, std::mt19937& rng, int64_t* covered) {
  const int sizes[][2] = {{16, 16}, {32, 24}, {24, 40}, {64, 64}, {7, 5}};
  const int height = sizes[mesh % 5][0], width = sizes[mesh % 5][1];
  const int n_faces = 1 + static_cast<int>(rng() % 60);
  const std::vector<float> fv = random_mesh(rng, n_faces, height, width, mesh % 2 == 1);
  const nmr::RasterParams r{height, width, 0.1f, 100.f};
  const int64_t P = static_cast<int64_t>(height) * width;

  Image want(P);
  for (int64_t p = 0; p < P; ++p) want.depth[p] = r.far;
  for (int f = 0; f < n_faces; ++f)
    nmr::draw_face(nmr::setup_face(&fv[9 * f], height, width), f, r, 0, height - 1, want.maps());

  // Pass 1 in reverse face and tile order, as the GPU's threads may run: the GPU's tiles, and
  // smaller ones that split the faces of these small images into many.
  const nmr::Tiling tilings[] = {{8, 32}, {1, 1}, {2, 3}, {5, 2}};
  const nmr::Tiling tiling = tilings[mesh % 4];
  std::vector<uint64_t> keys(P, nmr::kNoFragment);
  for (int f = n_faces - 1; f >= 0; --f) {
    const nmr::Face face = nmr::setup_face(&fv[9 * f], height, width);
    if (!face.visible) continue;
    const nmr::PixelRect box = nmr::face_box(face, r);
    for (int64_t t = nmr::tile_count(box, tiling) - 1; t >= 0; --t)
      nmr::for_each_fragment_in(face, r, nmr::tile_rect(box, tiling, t),
                                [&](int64_t p, float zp, const float*) {
                                  const uint64_t key = nmr::fragment_key(zp, f);
                                  if (key < keys[p]) keys[p] = key;
                                });
  }
  Image got(P);
  for (int64_t p = 0; p < P; ++p) nmr::resolve_pixel(keys[p], fv.data(), r, p, got.maps());

  check(got.face_index == want.face_index, "face index", mesh);
  check(std::memcmp(got.weights.data(), want.weights.data(), 4 * got.weights.size()) == 0, "weights", mesh);
  check(std::memcmp(got.depth.data(), want.depth.data(), 4 * got.depth.size()) == 0, "depth", mesh);
  for (int32_t f : want.face_index) *covered += f >= 0;
}

// Faces of every size and orientation around a 64-pixel row, up to 2^61 pixels away (2^62 is
// setup_face's limit), some with an edge within a hair of horizontal.
void check_row_spans(std::mt19937& rng, int64_t* covered) {
  const float scales[] = {1.f, 40.f, 1e4f, 1e7f, 0x1p40f, 0x1p61f};
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  const int width = 64;
  for (int n = 0; n < 3000; ++n) {
    nmr::Face f;
    for (int k = 0; k < 3; ++k) {
      f.x[k] = 32.f + scales[rng() % 6] * unit(rng);
      f.y[k] = 8.f + scales[rng() % 6] * unit(rng);
      f.z[k] = 1.f;
    }
    if (n % 3 == 0) f.y[1] = std::nextafter(f.y[0], 1e30f);  // Edge 0-1 nearly horizontal.
    for (int yi = 0; yi < 16; ++yi) {
      const float yp = static_cast<float>(yi);
      const int lo0 = static_cast<int>(rng() % 20), hi0 = width - 1 - static_cast<int>(rng() % 20);
      int lo = lo0, hi = hi0;
      nmr::row_span(f, yp, &lo, &hi);
      bool ok = lo >= lo0 && hi <= hi0;
      for (int xi = lo0; xi <= hi0; ++xi) {
        const bool in = nmr::covers(f, static_cast<float>(xi), yp);
        ok = ok && in == (xi >= lo && xi <= hi);
        *covered += in;
      }
      check(ok, "row span", n);
    }
  }
}

void check_fragment_key_order() {
  const float depths[] = {-2.f, -1e-30f, -0.f, 0.f, 1e-30f, 0.1f, 1.f, 3e38f};
  for (float a : depths)
    for (float b : depths) {
      const bool key_less = nmr::fragment_key(a, 7) < nmr::fragment_key(b, 7);
      check(key_less == (a < b), "fragment_key order", -1);
      check((nmr::fragment_key(a, 3) < nmr::fragment_key(b, 4)) == (a <= b), "index breaks ties", -1);
    }
}

// Squared NDC distance from (px, py) to the boundary of the triangle (x, y), in double.
double boundary_dist2(const double* x, const double* y, double px, double py) {
  double best = INFINITY;
  for (int e = 0; e < 3; ++e) {
    const int e1 = (e + 1) % 3;
    const double ex = x[e1] - x[e], ey = y[e1] - y[e], len2 = ex * ex + ey * ey;
    const double t =
        len2 > 0 ? std::fmin(std::fmax(((px - x[e]) * ex + (py - y[e]) * ey) / len2, 0.), 1.) : 0.;
    const double dx = px - x[e] - t * ex, dy = py - y[e] - t * ey;
    best = std::fmin(best, dx * dx + dy * dy);
  }
  return best;
}

void check_distances() {
  std::mt19937 rng(777);
  std::uniform_real_distribution<float> ndc(-1.2f, 1.2f);
  const int sizes[][2] = {{16, 16}, {24, 40}, {64, 32}};
  int inside = 0;
  for (int n = 0; n < 2000; ++n) {
    const int height = sizes[n % 3][0], width = sizes[n % 3][1];
    float fv[9];
    double x[3], y[3];
    for (int k = 0; k < 3; ++k) {
      fv[3 * k] = ndc(rng);
      fv[3 * k + 1] = ndc(rng);
      fv[3 * k + 2] = 1.f;
      x[k] = fv[3 * k];
      y[k] = fv[3 * k + 1];
    }
    const nmr::Face f = nmr::setup_face(fv, height, width);
    const int xi = static_cast<int>(rng() % width), yi = static_cast<int>(rng() % height);
    const double px = (2. * xi + 1. - width) / width, py = (2. * yi + 1. - height) / height;
    nmr::NearestEdge near;
    const float got =
        nmr::signed_dist2(f, static_cast<float>(xi), static_cast<float>(yi), height, width, &near);
    const double want = boundary_dist2(x, y, px, py);
    const bool in = nmr::covers(f, static_cast<float>(xi), static_cast<float>(yi));
    inside += in;
    check(std::fabs(std::fabs(got) - want) <= 1e-5 * (1. + want), "distance", n);
    check((got < 0.f) == (in && want > 0.), "sign is coverage", n);
    // Not above any sampled boundary point, and within the sampling's spacing of the closest one.
    double sampled = INFINITY, spacing = 0.;
    for (int e = 0; e < 3; ++e) {
      const int e1 = (e + 1) % 3;
      spacing = std::fmax(spacing, std::hypot(x[e1] - x[e], y[e1] - y[e]) / 100.);
      for (int i = 0; i <= 100; ++i) {
        const double t = i / 100., dx = px - x[e] - t * (x[e1] - x[e]), dy = py - y[e] - t * (y[e1] - y[e]);
        sampled = std::fmin(sampled, dx * dx + dy * dy);
      }
    }
    check(want <= sampled + 1e-12, "below the sampled boundary", n);
    check(std::sqrt(sampled) <= std::sqrt(want) + spacing, "near the sampled boundary", n);
    // Gradient in the NDC x, y of each vertex against central differences (h in NDC).
    float grad[9] = {};
    nmr::nearest_edge_grad(f, static_cast<float>(xi), static_cast<float>(yi), height, width, near, 1.f, grad);
    const double h = 1e-6;
    for (int k = 0; k < 3; ++k)
      for (int a = 0; a < 2; ++a) {
        double* c = a == 0 ? x : y;
        const double keep = c[k];
        c[k] = keep + h;
        const double up = boundary_dist2(x, y, px, py);
        c[k] = keep - h;
        const double down = boundary_dist2(x, y, px, py);
        c[k] = keep;
        check(std::fabs(grad[3 * k + a] - (up - down) / (2 * h)) <= 1e-3 * (1. + std::fabs(grad[3 * k + a])),
              "distance gradient", n);
      }
    check(grad[2] == 0.f && grad[5] == 0.f && grad[8] == 0.f, "no depth gradient", n);
  }
  check(inside > 100, "some pixels inside", -1);
  std::printf("signed distances vs double and sampled boundaries: 2000 pixels, %d inside\n", inside);
}

// The atomic minimum of the GPU's lists on the host: a compare-and-swap loop; returns the old key.
uint64_t atomic_min(uint64_t* slot, uint64_t key) {
  uint64_t old = __atomic_load_n(slot, __ATOMIC_SEQ_CST);
  while (key < old &&
         !__atomic_compare_exchange_n(slot, &old, key, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

void check_layer_lists() {
  std::mt19937 rng(99);
  int64_t inserted = 0;
  for (int trial = 0; trial < 3050; ++trial) {
    // Small lists in any order; then 50 long runs of 4 threads at once, long enough to overlap.
    const bool threaded = trial >= 3000;
    const int K = threaded ? 16 : 1 + static_cast<int>(rng() % 6);
    const int n = threaded ? 2000 : static_cast<int>(rng() % 14);
    std::vector<float> depth(n);
    for (float& d : depth) d = 0.25f * static_cast<float>(1 + rng() % (threaded ? 40 : 5));  // ties
    std::vector<float> want_depth(K, 100.f);
    std::vector<int32_t> want_face(K, -1);
    int32_t filled = 0;
    for (int f = 0; f < n; ++f)
      nmr::insert_layer(depth[f], f, K, want_depth.data(), want_face.data(), &filled);
    std::vector<int> order(n);
    for (int f = 0; f < n; ++f) order[f] = f;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<uint64_t> keys(K, nmr::kNoFragment);
    auto insert = [&](int i) {
      nmr::insert_layer_key(nmr::fragment_key(depth[order[i]], order[i]), K, keys.data(), atomic_min);
    };
    if (threaded) {  // thread t inserts fragments t, t + 4, ... of the shuffled order
      std::vector<std::thread> threads;
      for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
          for (int i = t; i < n; i += 4) insert(i);
        });
      for (std::thread& thread : threads) thread.join();
    } else {
      for (int i = 0; i < n; ++i) insert(i);
    }
    for (int k = 0; k < K; ++k) {
      const bool empty = want_face[k] < 0;
      check(keys[k] == (empty ? nmr::kNoFragment : nmr::fragment_key(want_depth[k], want_face[k])),
            "layer list", trial);
    }
    check(filled == std::min(n, K), "layer list length", trial);
    inserted += n;
  }
  std::printf("layer lists in any order and from 4 threads vs in order: 3050 pixels, %lld fragments\n",
              static_cast<long long>(inserted));
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  const int meshes = 400;
  int64_t covered = 0;
  for (int mesh = 0; mesh < meshes; ++mesh) check_two_pass_rasterizer(mesh, rng, &covered);
  std::printf("two-pass rasterizer vs draw_face: %d meshes, %lld covered pixels\n", meshes,
              static_cast<long long>(covered));
  int64_t in_spans = 0;
  check_row_spans(rng, &in_spans);
  std::printf("row spans vs edge tests: 3000 faces, %lld covered pixels\n", static_cast<long long>(in_spans));
  check(in_spans > 0, "row spans cover something", -1);
  check_fragment_key_order();
  std::printf("fragment_key order: 64 depth pairs\n");
  check_distances();
  check_layer_lists();
  if (covered == 0) {
    std::printf("FAIL: nothing was drawn\n");
    return 1;
  }
  std::printf(failures == 0 ? "core test passed\n" : "core test FAILED: %d mismatches\n", failures);
  return failures == 0 ? 0 : 1;
}
