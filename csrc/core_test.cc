// Host unit test of nmr_core.h, built and run by tests/test_core.py (no framework, no XLA).
//
// 1. The GPU's two-pass rasterizer (pass 1: per-pixel minimum of fragment_key over every fragment
//    of every face, in any order; pass 2: resolve_pixel) against draw_face in increasing face
//    order, the CPU's way, on random meshes with exact depth ties, duplicated faces, off-grid
//    vertices and non-square images: face ids, weights and depths must be bit for bit equal.
// 2. fragment_key orders depths as floats do, with -0.0 equal to +0.0.
// Prints one line per check and exits non-zero on the first mismatch.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

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

  // Pass 1 in reverse face order and split over 8 lanes, as the GPU's threads may run.
  std::vector<uint64_t> keys(P, nmr::kNoFragment);
  for (int f = n_faces - 1; f >= 0; --f) {
    const nmr::Face face = nmr::setup_face(&fv[9 * f], height, width);
    for (int lane = 7; lane >= 0; --lane)
      nmr::for_each_fragment(face, r, nmr::FragmentRange{0, height - 1, lane, 8},
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

void check_fragment_key_order() {
  const float depths[] = {-2.f, -1e-30f, -0.f, 0.f, 1e-30f, 0.1f, 1.f, 3e38f};
  for (float a : depths)
    for (float b : depths) {
      const bool key_less = nmr::fragment_key(a, 7) < nmr::fragment_key(b, 7);
      check(key_less == (a < b), "fragment_key order", -1);
      check((nmr::fragment_key(a, 3) < nmr::fragment_key(b, 4)) == (a <= b), "index breaks ties", -1);
    }
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  const int meshes = 400;
  int64_t covered = 0;
  for (int mesh = 0; mesh < meshes; ++mesh) check_two_pass_rasterizer(mesh, rng, &covered);
  std::printf("two-pass rasterizer vs draw_face: %d meshes, %lld covered pixels\n", meshes,
              static_cast<long long>(covered));
  check_fragment_key_order();
  std::printf("fragment_key order: 64 depth pairs\n");
  if (covered == 0) {
    std::printf("FAIL: nothing was drawn\n");
    return 1;
  }
  std::printf(failures == 0 ? "core test passed\n" : "core test FAILED: %d mismatches\n", failures);
  return failures == 0 ? 0 : 1;
}
