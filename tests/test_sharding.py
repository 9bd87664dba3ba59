"""Sharding a batch across devices (nmr_jax/_partition.py): the custom calls run once per shard.

The checks need 4 devices, and ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` only counts
before jax starts its CPU backend, so the test runs this file as a script in a fresh interpreter.
Sharded results must equal unsharded ones (forward and gradients), and the compiled HLO must hold
no all-gather, with every rasterization custom call seeing a quarter of the batch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import host_devices

DEVICES = 4
VIEWS = 8  # Two per device.
SIZE = 16  # Output image side; rasterized at 32 with anti-aliasing.


@pytest.mark.versions
def test_sharded_equals_unsharded_without_all_gather():
    env = dict(os.environ, XLA_FLAGS=host_devices(DEVICES))
    env["JAX_PLATFORMS"] = "cpu"  # the forced devices are host devices, also on a GPU machine
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Each check prints one line; all of them must have run.
    assert proc.stdout.count("ok ") == 4, proc.stdout


def _rasterize_batches(hlo: str, target: str = "nmr_rasterize") -> list[int]:
    """Leading (batch) dim of the first output of each custom call to ``target``."""
    lines = [line for line in hlo.splitlines() if f'custom_call_target="{target}"' in line]
    return [int(re.search(r"= \(?\w+\[(\d+),", line).group(1)) for line in lines]  # type: ignore[union-attr]


def _main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import nmr_jax as nr

    assert jax.device_count() == DEVICES, jax.devices()
    vertices, faces = nr.data.teapot()
    rng = np.random.default_rng(0)
    textures = jnp.asarray(rng.uniform(size=(faces.shape[0], 2, 2, 2, 3)), jnp.float32)
    eyes = nr.get_points_from_angles(2.732, 30.0, jnp.arange(VIEWS) * (360.0 / VIEWS))
    weights = [
        jnp.asarray(rng.normal(size=(VIEWS, SIZE, SIZE) + c), jnp.float32) for c in [(3,), ()]
    ]
    renderer = nr.Renderer(image_size=SIZE)

    def views(vertices, textures, eyes):
        """Shared mesh and textures, one camera per view: vmap over the eyes."""
        render = lambda e: renderer.render(vertices, faces, textures, eye=e)  # noqa: E731
        return jax.vmap(render)(eyes)

    def meshes(vertices, textures, eyes):
        """One mesh per view as a leading batch dim (no vmap), shared textures."""
        return renderer.render(vertices, faces, textures, eye=eyes)

    def loss(fn, vertices, textures, eyes, w_rgb, w_depth):
        rgb, depth, alpha = fn(vertices, textures, eyes)
        return jnp.sum(rgb * w_rgb) + jnp.sum((alpha + 0.01 * depth) * w_depth)

    def check(name, fn, mesh, vertices, targets=(("nmr_rasterize",), ())):
        """fn's forward and gradients, views sharded over `mesh` vs all on one device; the custom
        calls ``targets`` (of the forward, and the gradient's own) each see a shard's views."""
        args = (vertices, textures, eyes, *weights)
        specs = (P("views") if vertices.ndim == 3 else P(), P(), P("views"), P("views"), P("views"))
        sharded = [
            jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs, strict=True)
        ]
        one = [jax.device_put(a, jax.devices()[0]) for a in args]
        forward = jax.jit(fn)
        grad = jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2)))
        # Gradients are float32 sums over thousands of terms, which the sharded program adds in
        # another order (per shard, then psum; XLA vectorises per shard shape): differences of
        # 1.1e-5 of the largest entry were measured on jax 0.12, so they get 1e-4 (the CUDA
        # parity tolerance); the forward is exact.
        for f, n, tol in [(forward, 3, 1e-5), (grad, 5, 1e-4)]:
            want, got = f(*one[:n]), f(*sharded[:n])
            for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
                scale = float(np.abs(np.asarray(w)).max()) or 1.0
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=tol * scale, rtol=0)
            hlo = f.lower(*sharded[:n]).compile().as_text()
            assert "all-gather" not in hlo, f"{name}: all-gather in\n{hlo}"
            for target in targets[0] + (targets[1] if f is grad else ()):
                batches = _rasterize_batches(hlo, target)
                assert batches and set(batches) == {VIEWS // DEVICES}, (name, target, batches)
        rgb = forward(*sharded[:3])[0]
        assert rgb.sharding.spec[0] == "views", rgb.sharding
        print("ok", name)

    # jax.make_mesh gives explicit axes (shardings in the types); Mesh() gives auto axes.
    explicit = jax.make_mesh((DEVICES,), ("views",))
    auto = jax.sharding.Mesh(np.array(jax.devices()), ("views",))
    check("vmap over views, explicit axes", views, explicit, vertices)
    # Shared textures and batched meshes: the textures' gradient is a sum over sharded views.
    batched = jnp.broadcast_to(vertices, (VIEWS, *vertices.shape))
    check("batched meshes, auto axes", meshes, auto, batched)
    # The soft rule's targets (colours, silhouettes) shard the same way.
    soft = nr.Renderer(image_size=SIZE, rule=nr.SoftRule(sigma=1e-3, gamma=1e-3))

    def soft_views(vertices, textures, eyes):
        return jax.vmap(lambda e: soft.render(vertices, faces, textures, eye=e))(eyes)

    soft_targets = (
        ("nmr_rasterize", "nmr_soft_silhouettes", "nmr_soft_rgb"),
        ("nmr_soft_silhouettes_bwd", "nmr_soft_rgb_bwd"),
    )
    check("soft rule, vmap over views", soft_views, explicit, vertices, soft_targets)

    # Layers of the views (K = 3, blurred) and their blends (the barycentrics as colours), the
    # vertex gradient through depth, dist and the barycentrics.
    def layered(vertices, eyes, w):
        fv = jax.vmap(lambda e: nr.vertices_to_faces(renderer.transform(vertices, eye=e), faces))
        layers = nr.rasterize_layers(fv(eyes), SIZE, num_layers=3, blur_radius=0.01)
        maps = jnp.where(layers.face_index >= 0, layers.depth + layers.dist, 0.0)
        soft = nr.softmax_blend(layers.bary, layers, 1e-2, 1e-2)
        over = nr.alpha_composite(layers.bary, jnp.full(layers.depth.shape, 0.5), layers)
        images = jnp.sum(soft + over, -1)
        return jnp.sum(maps * w[..., None]) + jnp.sum(images * w), (layers, soft, over)

    w = weights[1]
    specs = (P(), P("views"), P("views"))
    sharded = [
        jax.device_put(a, NamedSharding(explicit, s))
        for a, s in zip((vertices, eyes, w), specs, strict=True)
    ]
    one = [jax.device_put(a, jax.devices()[0]) for a in (vertices, eyes, w)]
    f = jax.jit(jax.value_and_grad(layered, has_aux=True))
    for want, got in zip(jax.tree.leaves(f(*one)), jax.tree.leaves(f(*sharded)), strict=True):
        scale = float(np.abs(np.asarray(want)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4 * scale, rtol=0)
    hlo = f.lower(*sharded).compile().as_text()
    assert "all-gather" not in hlo, hlo
    assert set(_rasterize_batches(hlo, "nmr_rasterize_layers")) == {VIEWS // DEVICES}
    print("ok layers of views and their blends, explicit axes")


if __name__ == "__main__":
    _main()
