"""CPU benchmark of nmr_jax against other differentiable renderers, side by side in one process.

Scenes: the shipped teapot (2256 faces), an icosphere (5120 faces) and, at 1024^2, a torus of
100,352 faces; image sizes 64^2 to 1024^2 with anti-aliasing on and off, batch 1 and 8; forward
(rgb and alpha) and forward+backward (gradient of an L2 image loss w.r.t. the vertices). Times are
medians over repeated runs after warm-up (compilation excluded); peak RSS is sampled during the
runs of each entry (the whole process: it includes the ~0.3 GB of the Python/JAX runtime), and
XLA's own account of the compiled program's memory is printed beside it.

nmr_jax and the brute force rasterize each face and its reversed copy (the original's
``fill_back``, so the table's face counts are twice the mesh's), under the same camera (look-at from
the original's default distance, 30 degree half-angle perspective), with colours from the same
2^3 texture cubes and no lighting.

Baselines, each run where available and skipped with a note otherwise:
- ``brute``: the tests' brute-force pure-jnp rasterizer (tests/_reference.py: every pixel against
  every face, chunked over rows) for visibility, then the winning face's barycentrics in jnp
  (differentiable) and the reference's texture sampling; only where B x pixels x faces is small
  enough (see BRUTE_MAX_PAIRS).
- ``mi int.`` / ``mi sil.``: Mitsuba 3 (``pip install mitsuba``), variant ``llvm_ad_rgb``, constant
  environment light, the mesh once (a ray tracer sees both sides), 1 sample per pixel (4 with
  anti-aliasing: the samples of nmr_jax's 2x2 supersampling). Forward and interior-only gradients
  with the ``direct`` integrator; silhouette gradients of primary visibility with
  ``direct_projective`` (sppi 0, no guiding). It needs libLLVM >= 16: point DRJIT_LIBLLVM_PATH at
  it (Debian 12: ``libllvm19``, e.g. unpacked with ``apt-get download`` and ``dpkg -x``).
- PyTorch3D and jaxrenderer: not adapted here; reported as skipped.

A second table times the shader path (a UV image texture through ``interpolate`` and
``sample_texture``) against the texture-cube path: the teapot at 256^2 with anti-aliasing and a
512^2 texture, and the 100k-face torus at 1024^2 with a 1024^2 texture, the two paths run
alternately (3x the repeats each) and their ratio the median of the back-to-back pairs' ratios.

A third table times the cost of the Renderer's near-plane clipping for scenes wholly in front of
the camera: ``Renderer.render`` (texture cubes, lighting, ``fill_back``; and
``render_silhouettes``) with clipping (the default) against ``clip=False`` (the same images, bit
for bit), forward and forward+backward, alternately in pairs as the second table.

Usage: ``python benchmarks/bench_cpu.py`` (every entry; tens of minutes on 2 cores, most of it in
the baselines), ``--quick`` (4 entries, a few minutes; no second or third table),
``--shader-only`` (the second table; with ``--quick``, the teapot at 64^2 only) or
``--clip-only`` (the third; with ``--quick``, the teapot at 64^2 only).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _meshes import scenes  # benchmarks/ is the script's folder

import nmr_jax as nr

ROOT = Path(__file__).resolve().parents[1]
EYE = (0.0, 0.0, -2.732)
ANGLE = 30.0
NEAR, FAR = 0.1, 100.0
# The brute force costs 30-80 ns per pixel-face pair on the 2-core VM it was written on: it runs
# only up to the teapot at 256^2 with anti-aliasing (1.2e9 pairs, about a minute per call), and
# with --quick up to 1e8 pairs.
BRUTE_MAX_PAIRS = 1.2e9
BRUTE_MAX_PAIRS_QUICK = 1e8


# ----------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Case:
    scene: str
    size: int
    aa: bool
    batch: int


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("teapot", 64, False, 1), Case("teapot", 256, True, 1),
                Case("icosphere", 256, False, 1), Case("torus100k", 1024, False, 1)]  # fmt: skip
    out = [
        Case(scene, size, aa, batch)
        for scene in ("teapot", "icosphere")
        for size in (64, 256, 512, 1024)
        for aa in (False, True)
        for batch in (1, 8)
    ]
    return out + [Case("torus100k", 1024, False, 1), Case("torus100k", 1024, True, 1)]


# ----------------------------------------------------------------------------------------------
# Renderers: each returns (forward, forward+backward) callables of the vertices [B, V, 3].


def project(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    v = nr.perspective(nr.look_at(vertices, jnp.asarray(EYE, jnp.float32)), ANGLE)
    return nr.vertices_to_faces(v, faces)


def l2_loss(rgb: jax.Array, alpha: jax.Array) -> jax.Array:
    # A dense incoming gradient on every pixel and channel, as an image-fitting loss gives.
    return jnp.sum((rgb - 0.3) ** 2) + jnp.sum((alpha - 0.5) ** 2)


def make_jax_pair(rasterize: Callable, faces, textures, case: Case):
    faces, textures = jnp.asarray(faces), jnp.asarray(textures)

    def forward(v):
        return rasterize(project(v, faces), textures, case)

    fwd = jax.jit(forward)
    bwd = jax.jit(jax.value_and_grad(lambda v: l2_loss(*forward(v))))
    return fwd, bwd


def nmr_rasterize(fv, textures, case: Case):
    out = nr.rasterize_rgbad(
        fv, textures, case.size, case.aa, NEAR, FAR, return_depth=False
    )  # fmt: skip
    return out.rgb, out.alpha


def brute_rasterize(fv, textures, case: Case):
    """Visibility from tests/_reference.py (every pixel against every face), chunked over rows;
    then the winning face's barycentrics and depth in jnp, differentiable, and the reference's
    texture sampling. Rows are flipped and anti-aliased like nmr_jax's images."""
    sys.path.insert(0, str(ROOT))
    from tests import _reference as ref

    n = case.size * (2 if case.aa else 1)
    batch, n_faces = fv.shape[0], fv.shape[-3]
    textures = jnp.broadcast_to(textures, (batch, *textures.shape))
    # Rows per chunk: keep a chunk's [B, rows, W, F] intermediates near 2^22 elements.
    rows = int(max(1, min(n, 2**22 // (batch * n * n_faces))))
    while n % rows:
        rows -= 1

    def chunk(r0):
        # Rows [r0, r0 + rows) of the n-row image: shift y so that the reference's pixel mapping
        # of an image of `rows` rows lands on them.
        y = (fv[..., 1] * n + n - 2 * r0 - rows) / rows
        fi, _, _ = ref.forward(jax.lax.stop_gradient(fv.at[..., 1].set(y)), rows, n, NEAR, FAR)
        return fi

    fi = jax.lax.map(chunk, jnp.arange(0, n, rows))
    fi = jnp.moveaxis(fi, 0, 1).reshape(batch, n, n)
    b = jnp.arange(batch)[:, None, None]
    face = fv[b, jnp.maximum(fi, 0)]  # [B, n, n, 3, 3]
    x, y, z = (0.5 * (face[..., 0] + 1) * n - 0.5, 0.5 * (face[..., 1] + 1) * n - 0.5, face[..., 2])
    xp = jnp.arange(n, dtype=jnp.float32)[None, None, :, None]
    yp = jnp.arange(n, dtype=jnp.float32)[None, :, None, None]
    k1, k2 = [1, 2, 0], [2, 0, 1]
    edge = (x[..., k2] - x[..., k1]) * (yp - y[..., k1]) - (y[..., k2] - y[..., k1]) * (
        xp - x[..., k1]
    )
    w = jnp.clip(edge / jnp.sum(edge, -1, keepdims=True), 0.0, 1.0)
    w = w / jnp.sum(w, -1, keepdims=True)
    depth = 1.0 / jnp.sum(w / z, -1)
    covered = fi >= 0
    rgb = ref.sample(fv, textures, fi, jnp.where(covered[..., None], w, 0.0), depth, 1e-3)
    rgb, alpha = jnp.flip(rgb, -3), jnp.flip(covered.astype(jnp.float32), -2)
    if case.aa:
        rgb = rgb.reshape(batch, n // 2, 2, n // 2, 2, 3).mean((2, 4))
        alpha = alpha.reshape(batch, n // 2, 2, n // 2, 2).mean((2, 4))
    return rgb, alpha


def mitsuba_fns(vertices: np.ndarray, faces: np.ndarray, case: Case):
    """Mitsuba 3 LLVM, 1 sample per pixel (4 with anti-aliasing), constant environment light:
    forward ('direct'),
    forward+backward with interior gradients only ('direct') and with silhouette gradients
    ('direct_projective')."""
    import drjit as dr
    import mitsuba as mi

    mi.set_variant("llvm_ad_rgb")
    n = case.size
    # Anti-aliasing: 4 samples per pixel, the samples of nmr_jax's 2x2 supersampling.
    spp = 4 if case.aa else 1
    # The faces once: a ray tracer sees both sides anyway, and the reversed copies would make the
    # mesh non-manifold for the silhouette sampling of 'direct_projective'.
    mesh = mi.Mesh("m", vertex_count=len(vertices[0]), face_count=len(faces))
    params = mi.traverse(mesh)
    params["vertex_positions"] = mi.Float(np.ravel(vertices[0]))
    params["faces"] = mi.UInt32(np.ravel(faces).astype(np.uint32))
    params.update()

    def scene(integrator: dict):
        return mi.load_dict({
            "type": "scene",
            "integrator": integrator,
            "sensor": {
                "type": "perspective", "fov": 2 * ANGLE, "fov_axis": "x",
                "to_world": mi.ScalarTransform4f().look_at(origin=EYE, target=(0, 0, 0), up=(0, 1, 0)),
                "film": {"type": "hdrfilm", "width": n, "height": n, "rfilter": {"type": "box"},
                         "sample_border": integrator["type"] == "direct_projective"},
                "sampler": {"type": "independent", "sample_count": spp},
            },
            "emitter": {"type": "constant"},
            "mesh": mesh,
        })  # fmt: skip

    # Silhouette gradients of primary visibility only (what Kato's rule approximates): no
    # indirect-visibility samples, so no guiding structure is rebuilt on every call.
    projective = {"type": "direct_projective", "sppi": 0, "guiding": "none"}
    direct_scene, projective_scene = scene({"type": "direct"}), scene(projective)
    base = mi.Float(np.ravel(vertices[0]))

    def fwd(_):
        img = mi.render(direct_scene, spp=spp)
        dr.eval(img)
        return img

    def fwd_bwd(scene):
        params = mi.traverse(scene)
        key = "mesh.vertex_positions"

        def run(_):
            params[key] = mi.Float(base)
            dr.enable_grad(params[key])
            params.update()
            img = mi.render(scene, params, spp=spp)
            dr.backward(dr.sum(dr.square(img - 0.3), axis=None))
            g = dr.grad(params[key])
            dr.eval(g)
            return g

        return run

    return fwd, fwd_bwd(direct_scene), fwd_bwd(projective_scene)


def shader_pairs(vertices: np.ndarray, faces: np.ndarray, size: int, texture: int, aa: bool):
    """(cube, shader) forward+backward callables of the vertices [1, V, 3]: the texture-cube path
    (2^3 cubes, the original's kernel) and the shader path with a ``texture``^2 UV image
    (spherical UVs, bilinear). Both differentiate an L2 loss of rgb and alpha w.r.t. the vertices
    and the appearance (cubes, or image)."""
    both = np.concatenate([faces, faces[:, ::-1]])
    rng = np.random.default_rng(1)
    cubes = jnp.asarray(rng.uniform(0.2, 1.0, (len(both), 2, 2, 2, 3)), jnp.float32)
    image = jnp.asarray(rng.uniform(0.2, 1.0, (texture, texture, 3)), jnp.float32)
    uvs = nr.spherical_uvs(vertices, both)
    f = jnp.asarray(both)

    def shader(fragments, image):
        return nr.sample_texture(image, nr.interpolate(uvs, None, fragments))

    def cube_loss(v, cubes):
        out = nr.rasterize_rgbad(project(v, f), cubes, size, aa, NEAR, FAR, return_depth=False)
        return l2_loss(out.rgb, out.alpha)

    def shader_loss(v, image):
        out = nr.rasterize_shaded(project(v, f), shader, (image,), size, aa, NEAR, FAR)
        return l2_loss(out.image, out.alpha)

    cube = jax.jit(jax.value_and_grad(cube_loss, argnums=(0, 1)))
    shaded = jax.jit(jax.value_and_grad(shader_loss, argnums=(0, 1)))
    return (lambda v: cube(v, cubes)), (lambda v: shaded(v, image))


def shader_table(meshes: dict, repeats: int, quick: bool) -> None:
    """The shader path against the texture-cube path, forward+backward, in this process."""
    print("# shader path: UV image texture (interpolate + sample_texture) vs texture cubes, "
          "fwd+bwd w.r.t. vertices and appearance, ms", flush=True)  # fmt: skip
    print(f"{'scene':10} {'faces':>6} {'size':>5} {'aa':>3} {'texture':>7} "
          f"{'cubes':>9} {'shader':>9} {'x':>6}", flush=True)  # fmt: skip
    entries = [("teapot", 256, 512, True), ("torus100k", 1024, 1024, False)]
    for scene, size, texture, aa in [("teapot", 64, 64, True)] if quick else entries:
        verts, faces = meshes[scene]
        cube, shaded = shader_pairs(verts, faces, size, texture, aa)
        v = jnp.asarray(verts[None])
        tc, ts, x = timed_pair(cube, shaded, v, 3 * repeats)
        print(f"{scene:10} {2 * len(faces):6d} {size:5d} {'on' if aa else 'off':>3} "
              f"{texture:5d}^2 {tc * 1e3:9.1f} {ts * 1e3:9.1f} {x:6.2f}", flush=True)  # fmt: skip
    print(f"# cubes, shader: medians of {3 * repeats} runs each, the two alternating; x: median of "
          "the ratios shader / cubes of the back-to-back pairs (same process, mesh, camera, loss).")  # fmt: skip


def clip_pairs(vertices: np.ndarray, faces: np.ndarray, size: int, aa: bool, silhouettes: bool):
    """[(clip=False, clip=True) forward callables, (the same) forward+backward callables] of the
    vertices [V, 3]: the Renderer with and without its near-plane clipping (the same images, bit
    for bit, for a scene in front). rgb and alpha of 2^3 texture cubes, lit, both sides; or the
    silhouettes only."""
    f = jnp.asarray(faces)
    rng = np.random.default_rng(2)
    cubes = jnp.asarray(rng.uniform(0.2, 1.0, (len(faces), 2, 2, 2, 3)), jnp.float32)

    def loss(clip: bool) -> Callable:
        renderer = nr.Renderer(
            image_size=size, anti_aliasing=aa, eye=EYE, viewing_angle=ANGLE, clip=clip
        )
        if silhouettes:
            return lambda v: jnp.sum((renderer.render_silhouettes(v, f) - 0.5) ** 2)

        def rgb_loss(v):
            rgb, _, alpha = renderer.render(v, f, cubes)
            return l2_loss(rgb, alpha)

        return rgb_loss

    return [
        tuple(jax.jit(loss(clip)) for clip in (False, True)),
        tuple(jax.jit(jax.value_and_grad(loss(clip))) for clip in (False, True)),
    ]


def clip_table(meshes: dict, repeats: int, quick: bool) -> None:
    """The Renderer with its clipping against the Renderer without, in this process."""
    print("# clipping: Renderer(clip=True) vs Renderer(clip=False), scene wholly in front (the "
          "same images), forward and fwd+bwd w.r.t. vertices, ms", flush=True)  # fmt: skip
    print(f"{'scene':10} {'faces':>6} {'size':>5} {'aa':>3} {'images':>11} {'fwd off':>8} "
          f"{'on':>7} {'x':>6} {'f+b off':>8} {'on':>7} {'x':>6}", flush=True)  # fmt: skip
    entries = [("teapot", 256, True, False), ("teapot", 256, True, True),
               ("torus100k", 1024, False, False)]  # fmt: skip
    for scene, size, aa, sil in [("teapot", 64, True, False)] if quick else entries:
        verts, faces = meshes[scene]
        cells = []
        for off, on in clip_pairs(verts, faces, size, aa, sil):
            t_off, t_on, x = timed_pair(off, on, jnp.asarray(verts), 3 * repeats)
            cells.append(f"{t_off * 1e3:8.1f} {t_on * 1e3:7.1f} {x:6.3f}")
        print(f"{scene:10} {2 * len(faces):6d} {size:5d} {'on' if aa else 'off':>3} "
              f"{'silhouettes' if sil else 'rgb+alpha':>11} {' '.join(cells)}", flush=True)  # fmt: skip
    print(f"# off, on: medians of {3 * repeats} runs each, the two alternating; x: median of the "
          "ratios on / off of the back-to-back pairs.")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Measurement


class PeakRSS:
    """Samples the resident set size (from /proc) every millisecond while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> PeakRSS:
        self.start = self._rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def seconds(fn: Callable, arg) -> float:
    """Wall-clock seconds of one call fn(arg), until its result is ready."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    return time.perf_counter() - t0


def timed_pair(a: Callable, b: Callable, arg, repeats: int) -> tuple[float, float, float]:
    """(median seconds of a, of b, median of the ratios b / a) over back-to-back pairs of runs:
    a ratio of two runs a moment apart is steadier than one of medians taken a while apart on a
    machine whose speed drifts (shared cores)."""
    for fn in (a, b, a, b):  # the first call of each compiles
        jax.block_until_ready(fn(arg))
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(seconds(a, arg))
        tb.append(seconds(b, arg))
    ratios = np.asarray(tb) / np.asarray(ta)
    return float(np.median(ta)), float(np.median(tb)), float(np.median(ratios))


def timed(fn: Callable, arg, repeats: int, warmup: int = 2) -> tuple[float, int, int]:
    """(median seconds, RSS bytes before, peak RSS bytes) of fn(arg) after warm-up calls (the
    first compiles)."""
    with PeakRSS() as rss:
        for _ in range(warmup):
            jax.block_until_ready(fn(arg))
        times = [seconds(fn, arg) for _ in range(repeats)]
    return float(np.median(times)), rss.start, rss.peak


def out_and_residual_bytes(case: Case, n_faces: int) -> int:
    """Bytes of the outputs (rgb, alpha) and of what the backward keeps from the forward: face
    index, weights, depth, rgb and alpha at the rasterized size, the projected faces."""
    n = case.size * (2 if case.aa else 1)
    out = case.batch * case.size**2 * 4 * 4
    res = case.batch * n * n * (1 + 3 + 1 + 3 + 1) * 4 + case.batch * n_faces * 9 * 4
    return out + res


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few entries, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per entry")
    parser.add_argument("--no-brute", action="store_true", help="skip the brute-force baseline")
    parser.add_argument("--no-mitsuba", action="store_true", help="skip Mitsuba 3")
    parser.add_argument("--shader-only", action="store_true", help="only the shader path's table")
    parser.add_argument("--clip-only", action="store_true", help="only the clipping cost's table")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)

    notes = []
    use_mitsuba = not args.no_mitsuba and available("mitsuba")
    if use_mitsuba:
        try:
            import mitsuba as mi

            mi.set_variant("llvm_ad_rgb")
        except Exception as e:  # noqa: BLE001 - any failure to load LLVM means: skip it
            use_mitsuba = False
            notes.append(f"mitsuba: skipped, llvm_ad_rgb unavailable ({type(e).__name__}: {e})")
    elif not args.no_mitsuba:
        notes.append("mitsuba: skipped, not installed (pip install mitsuba; see the docstring)")
    for name, module in (("pytorch3d", "pytorch3d"), ("jaxrenderer", "renderer")):
        state = "installed but not adapted" if available(module) else "not installed"
        notes.append(f"{name}: skipped, {state}")

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"jax {jax.__version__}, {repeats} timed runs per entry (median), ms", flush=True)  # fmt: skip
    header = (f"{'scene':10} {'faces':>6} {'size':>5} {'aa':>3} {'B':>2} {'mode':8} "
              f"{'nmr_jax':>9} {'RSS GB':>6} {'dRSS/io':>7} {'XLA/io':>6} {'brute':>9} {'x':>6}")  # fmt: skip
    if use_mitsuba:
        header += f" {'mi int.':>9} {'x':>6} {'mi sil.':>9} {'x':>6}"
    meshes = scenes()
    if args.shader_only:
        shader_table(meshes, repeats, args.quick)
        return
    if args.clip_only:
        clip_table(meshes, repeats, args.quick)
        return
    print(header, flush=True)
    rng = np.random.default_rng(0)
    for case in cases(args.quick):
        verts, faces = meshes[case.scene]
        both = np.concatenate([faces, faces[:, ::-1]])
        n_faces = len(both)
        # Batch elements: the mesh slightly jittered, so that no work is shared between them.
        v = verts[None] + rng.normal(0, 1e-3, (case.batch, *verts.shape)).astype(np.float32)
        v = jnp.asarray(v)
        tex = rng.uniform(0.2, 1.0, (n_faces, 2, 2, 2, 3)).astype(np.float32)
        raster = case.size * (2 if case.aa else 1)
        pairs = raster**2 * case.batch * n_faces
        run_brute = not args.no_brute and pairs <= (
            BRUTE_MAX_PAIRS_QUICK if args.quick else BRUTE_MAX_PAIRS
        )
        nmr_fns = make_jax_pair(nmr_rasterize, both, tex, case)
        brute_fns = make_jax_pair(brute_rasterize, both, tex, case) if run_brute else None
        mitsuba = (
            mitsuba_fns(np.asarray(v), faces, case) if use_mitsuba and case.batch == 1 else None
        )
        for mode, k in (("fwd", 0), ("fwd+bwd", 1)):
            t, before, peak = timed(nmr_fns[k], v, repeats)
            io = out_and_residual_bytes(case, n_faces)
            ratio_io = (peak - before) / io
            memory = nmr_fns[k].lower(v).compile().memory_analysis()
            ratio_xla = (memory.temp_size_in_bytes + memory.output_size_in_bytes) / io
            row = (f"{case.scene:10} {n_faces:6d} {case.size:5d} {'on' if case.aa else 'off':>3} "
                   f"{case.batch:2d} {mode:8} {t * 1e3:9.1f} {peak / 2**30:6.2f} "
                   f"{max(ratio_io, 0):7.2f} {ratio_xla:6.2f}")  # fmt: skip
            if brute_fns is not None:
                tb, _, _ = timed(brute_fns[k], v, max(1, repeats // 3), warmup=1)
                row += f" {tb * 1e3:9.1f} {tb / t:6.1f}"
            else:
                row += f" {'-':>9} {'':>6}"
            if mitsuba is not None:
                for fn in (mitsuba[0],) if k == 0 else mitsuba[1:]:
                    tm, _, _ = timed(fn, None, repeats)
                    row += f" {tm * 1e3:9.1f} {tm / t:6.1f}"
            print(row, flush=True)
    print(
        f"# max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
    )
    if use_mitsuba:
        print(
            "# mi int. / mi sil.: Mitsuba 3 'direct' (fwd; fwd+bwd with interior gradients only) and"
        )
        print("#   'direct_projective' (fwd+bwd with silhouette gradients), batch 1 only.")
    print("# x: baseline time / nmr_jax time. dRSS/io: nmr_jax's RSS peak above the level before")
    print("#   the entry (compilation included), over the bytes of its outputs and saved residuals")
    print("#   (an estimate: memory an earlier entry left to the allocator is not counted).")
    print("# XLA/io: the compiled program's temporaries and outputs by XLA's own account")
    print("#   (memory_analysis: no compilation, no allocator), over the same bytes.")
    limit = BRUTE_MAX_PAIRS_QUICK if args.quick else BRUTE_MAX_PAIRS
    print(
        f"# brute: only where B x pixels x faces <= {limit:.1e}; median of {max(1, repeats // 3)}."
    )
    for note in notes:
        print(f"# {note}")
    if not args.quick:
        shader_table(meshes, repeats, args.quick)
        clip_table(meshes, repeats, args.quick)


if __name__ == "__main__":
    main()
