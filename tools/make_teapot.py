"""Generate ``nmr_jax/assets/teapot.obj``, the Utah teapot, from Newell's Bezier patch data.

Martin Newell's teapot is 32 bicubic Bezier patches over 306 control points (rim, body, handle,
spout, lid, and the bottom that was added to his data later). Each patch is evaluated on a
GRID x GRID grid of quads, each quad split into two triangles, coincident vertices on the patch
seams are welded, and triangles that collapse at the lid knob and the bottom centre are dropped.

The data is z up; the mesh is written y up (spout towards +x), in Newell's units, in the OBJ
format ``nmr_jax._obj.save_obj`` writes (``v %.6f %.6f %.6f``, ``f i j k``, 1-based) plus a
header comment. Triangles are wound counter-clockwise seen from outside (positive signed
volume), like ``examples/data/teapot.obj`` of the original Neural 3D Mesh Renderer.

Usage: python tools/make_teapot.py [--output PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# Newell's control points (x y z, z up), numbered from 1 in PATCHES.
CONTROL_POINTS = """
    1.4,0.0,2.4 1.4,-0.784,2.4 0.784,-1.4,2.4 0.0,-1.4,2.4
    1.3375,0.0,2.53125 1.3375,-0.749,2.53125 0.749,-1.3375,2.53125 0.0,-1.3375,2.53125
    1.4375,0.0,2.53125 1.4375,-0.805,2.53125 0.805,-1.4375,2.53125 0.0,-1.4375,2.53125
    1.5,0.0,2.4 1.5,-0.84,2.4 0.84,-1.5,2.4 0.0,-1.5,2.4
    -0.784,-1.4,2.4 -1.4,-0.784,2.4 -1.4,0.0,2.4
    -0.749,-1.3375,2.53125 -1.3375,-0.749,2.53125 -1.3375,0.0,2.53125
    -0.805,-1.4375,2.53125 -1.4375,-0.805,2.53125 -1.4375,0.0,2.53125
    -0.84,-1.5,2.4 -1.5,-0.84,2.4 -1.5,0.0,2.4
    -1.4,0.784,2.4 -0.784,1.4,2.4 0.0,1.4,2.4
    -1.3375,0.749,2.53125 -0.749,1.3375,2.53125 0.0,1.3375,2.53125
    -1.4375,0.805,2.53125 -0.805,1.4375,2.53125 0.0,1.4375,2.53125
    -1.5,0.84,2.4 -0.84,1.5,2.4 0.0,1.5,2.4
    0.784,1.4,2.4 1.4,0.784,2.4
    0.749,1.3375,2.53125 1.3375,0.749,2.53125
    0.805,1.4375,2.53125 1.4375,0.805,2.53125
    0.84,1.5,2.4 1.5,0.84,2.4
    1.75,0.0,1.875 1.75,-0.98,1.875 0.98,-1.75,1.875 0.0,-1.75,1.875
    2.0,0.0,1.35 2.0,-1.12,1.35 1.12,-2.0,1.35 0.0,-2.0,1.35
    2.0,0.0,0.9 2.0,-1.12,0.9 1.12,-2.0,0.9 0.0,-2.0,0.9
    -0.98,-1.75,1.875 -1.75,-0.98,1.875 -1.75,0.0,1.875
    -1.12,-2.0,1.35 -2.0,-1.12,1.35 -2.0,0.0,1.35
    -1.12,-2.0,0.9 -2.0,-1.12,0.9 -2.0,0.0,0.9
    -1.75,0.98,1.875 -0.98,1.75,1.875 0.0,1.75,1.875
    -2.0,1.12,1.35 -1.12,2.0,1.35 0.0,2.0,1.35
    -2.0,1.12,0.9 -1.12,2.0,0.9 0.0,2.0,0.9
    0.98,1.75,1.875 1.75,0.98,1.875
    1.12,2.0,1.35 2.0,1.12,1.35
    1.12,2.0,0.9 2.0,1.12,0.9
    2.0,0.0,0.45 2.0,-1.12,0.45 1.12,-2.0,0.45 0.0,-2.0,0.45
    1.5,0.0,0.225 1.5,-0.84,0.225 0.84,-1.5,0.225 0.0,-1.5,0.225
    1.5,0.0,0.15 1.5,-0.84,0.15 0.84,-1.5,0.15 0.0,-1.5,0.15
    -1.12,-2.0,0.45 -2.0,-1.12,0.45 -2.0,0.0,0.45
    -0.84,-1.5,0.225 -1.5,-0.84,0.225 -1.5,0.0,0.225
    -0.84,-1.5,0.15 -1.5,-0.84,0.15 -1.5,0.0,0.15
    -2.0,1.12,0.45 -1.12,2.0,0.45 0.0,2.0,0.45
    -1.5,0.84,0.225 -0.84,1.5,0.225 0.0,1.5,0.225
    -1.5,0.84,0.15 -0.84,1.5,0.15 0.0,1.5,0.15
    1.12,2.0,0.45 2.0,1.12,0.45
    0.84,1.5,0.225 1.5,0.84,0.225
    0.84,1.5,0.15 1.5,0.84,0.15
    -1.6,0.0,2.025 -1.6,-0.3,2.025 -1.5,-0.3,2.25 -1.5,0.0,2.25
    -2.3,0.0,2.025 -2.3,-0.3,2.025 -2.5,-0.3,2.25 -2.5,0.0,2.25
    -2.7,0.0,2.025 -2.7,-0.3,2.025 -3.0,-0.3,2.25 -3.0,0.0,2.25
    -2.7,0.0,1.8 -2.7,-0.3,1.8 -3.0,-0.3,1.8 -3.0,0.0,1.8
    -1.5,0.3,2.25 -1.6,0.3,2.025
    -2.5,0.3,2.25 -2.3,0.3,2.025
    -3.0,0.3,2.25 -2.7,0.3,2.025
    -3.0,0.3,1.8 -2.7,0.3,1.8
    -2.7,0.0,1.575 -2.7,-0.3,1.575 -3.0,-0.3,1.35 -3.0,0.0,1.35
    -2.5,0.0,1.125 -2.5,-0.3,1.125 -2.65,-0.3,0.9375 -2.65,0.0,0.9375
    -2.0,-0.3,0.9 -1.9,-0.3,0.6 -1.9,0.0,0.6
    -3.0,0.3,1.35 -2.7,0.3,1.575
    -2.65,0.3,0.9375 -2.5,0.3,1.125
    -1.9,0.3,0.6 -2.0,0.3,0.9
    1.7,0.0,1.425 1.7,-0.66,1.425 1.7,-0.66,0.6 1.7,0.0,0.6
    2.6,0.0,1.425 2.6,-0.66,1.425 3.1,-0.66,0.825 3.1,0.0,0.825
    2.3,0.0,2.1 2.3,-0.25,2.1 2.4,-0.25,2.025 2.4,0.0,2.025
    2.7,0.0,2.4 2.7,-0.25,2.4 3.3,-0.25,2.4 3.3,0.0,2.4
    1.7,0.66,0.6 1.7,0.66,1.425
    3.1,0.66,0.825 2.6,0.66,1.425
    2.4,0.25,2.025 2.3,0.25,2.1
    3.3,0.25,2.4 2.7,0.25,2.4
    2.8,0.0,2.475 2.8,-0.25,2.475 3.525,-0.25,2.49375 3.525,0.0,2.49375
    2.9,0.0,2.475 2.9,-0.15,2.475 3.45,-0.15,2.5125 3.45,0.0,2.5125
    2.8,0.0,2.4 2.8,-0.15,2.4 3.2,-0.15,2.4 3.2,0.0,2.4
    3.525,0.25,2.49375 2.8,0.25,2.475
    3.45,0.15,2.5125 2.9,0.15,2.475
    3.2,0.15,2.4 2.8,0.15,2.4
    0.0,0.0,3.15 0.0,-0.002,3.15 0.002,0.0,3.15
    0.8,0.0,3.15 0.8,-0.45,3.15 0.45,-0.8,3.15 0.0,-0.8,3.15
    0.0,0.0,2.85
    0.2,0.0,2.7 0.2,-0.112,2.7 0.112,-0.2,2.7 0.0,-0.2,2.7
    -0.002,0.0,3.15 -0.45,-0.8,3.15 -0.8,-0.45,3.15 -0.8,0.0,3.15
    -0.112,-0.2,2.7 -0.2,-0.112,2.7 -0.2,0.0,2.7
    0.0,0.002,3.15 -0.8,0.45,3.15 -0.45,0.8,3.15 0.0,0.8,3.15
    -0.2,0.112,2.7 -0.112,0.2,2.7 0.0,0.2,2.7
    0.45,0.8,3.15 0.8,0.45,3.15
    0.112,0.2,2.7 0.2,0.112,2.7
    0.4,0.0,2.55 0.4,-0.224,2.55 0.224,-0.4,2.55 0.0,-0.4,2.55
    1.3,0.0,2.55 1.3,-0.728,2.55 0.728,-1.3,2.55 0.0,-1.3,2.55
    1.3,0.0,2.4 1.3,-0.728,2.4 0.728,-1.3,2.4 0.0,-1.3,2.4
    -0.224,-0.4,2.55 -0.4,-0.224,2.55 -0.4,0.0,2.55
    -0.728,-1.3,2.55 -1.3,-0.728,2.55 -1.3,0.0,2.55
    -0.728,-1.3,2.4 -1.3,-0.728,2.4 -1.3,0.0,2.4
    -0.4,0.224,2.55 -0.224,0.4,2.55 0.0,0.4,2.55
    -1.3,0.728,2.55 -0.728,1.3,2.55 0.0,1.3,2.55
    -1.3,0.728,2.4 -0.728,1.3,2.4 0.0,1.3,2.4
    0.224,0.4,2.55 0.4,0.224,2.55
    0.728,1.3,2.55 1.3,0.728,2.55
    0.728,1.3,2.4 1.3,0.728,2.4
    0.0,0.0,0.0
    1.5,0.0,0.15 1.5,0.84,0.15 0.84,1.5,0.15 0.0,1.5,0.15
    1.5,0.0,0.075 1.5,0.84,0.075 0.84,1.5,0.075 0.0,1.5,0.075
    1.425,0.0,0.0 1.425,0.798,0.0 0.798,1.425,0.0 0.0,1.425,0.0
    -0.84,1.5,0.15 -1.5,0.84,0.15 -1.5,0.0,0.15
    -0.84,1.5,0.075 -1.5,0.84,0.075 -1.5,0.0,0.075
    -0.798,1.425,0.0 -1.425,0.798,0.0 -1.425,0.0,0.0
    -1.5,-0.84,0.15 -0.84,-1.5,0.15 0.0,-1.5,0.15
    -1.5,-0.84,0.075 -0.84,-1.5,0.075 0.0,-1.5,0.075
    -1.425,-0.798,0.0 -0.798,-1.425,0.0 0.0,-1.425,0.0
    0.84,-1.5,0.15 1.5,-0.84,0.15
    0.84,-1.5,0.075 1.5,-0.84,0.075
    0.798,-1.425,0.0 1.425,-0.798,0.0
"""

# The patches: 16 control point numbers each, four rows of four. Walking a row is the patch's u
# direction and walking down the rows its v direction; u x v points out of the teapot for every
# patch, so the data is consistently oriented.
PATCHES = """
      1   2   3   4     5   6   7   8     9  10  11  12    13  14  15  16   # rim
      4  17  18  19     8  20  21  22    12  23  24  25    16  26  27  28   # rim
     19  29  30  31    22  32  33  34    25  35  36  37    28  38  39  40   # rim
     31  41  42   1    34  43  44   5    37  45  46   9    40  47  48  13   # rim
     13  14  15  16    49  50  51  52    53  54  55  56    57  58  59  60   # body
     16  26  27  28    52  61  62  63    56  64  65  66    60  67  68  69   # body
     28  38  39  40    63  70  71  72    66  73  74  75    69  76  77  78   # body
     40  47  48  13    72  79  80  49    75  81  82  53    78  83  84  57   # body
     57  58  59  60    85  86  87  88    89  90  91  92    93  94  95  96   # body
     60  67  68  69    88  97  98  99    92 100 101 102    96 103 104 105   # body
     69  76  77  78    99 106 107 108   102 109 110 111   105 112 113 114   # body
     78  83  84  57   108 115 116  85   111 117 118  89   114 119 120  93   # body
    121 122 123 124   125 126 127 128   129 130 131 132   133 134 135 136   # handle
    124 137 138 121   128 139 140 125   132 141 142 129   136 143 144 133   # handle
    133 134 135 136   145 146 147 148   149 150 151 152    69 153 154 155   # handle
    136 143 144 133   148 156 157 145   152 158 159 149   155 160 161  69   # handle
    162 163 164 165   166 167 168 169   170 171 172 173   174 175 176 177   # spout
    165 178 179 162   169 180 181 166   173 182 183 170   177 184 185 174   # spout
    174 175 176 177   186 187 188 189   190 191 192 193   194 195 196 197   # spout
    177 184 185 174   189 198 199 186   193 200 201 190   197 202 203 194   # spout
    204 204 204 204   207 208 209 210   211 211 211 211   212 213 214 215   # lid
    204 204 204 204   210 217 218 219   211 211 211 211   215 220 221 222   # lid
    204 204 204 204   219 224 225 226   211 211 211 211   222 227 228 229   # lid
    204 204 204 204   226 230 231 207   211 211 211 211   229 232 233 212   # lid
    212 213 214 215   234 235 236 237   238 239 240 241   242 243 244 245   # lid
    215 220 221 222   237 246 247 248   241 249 250 251   245 252 253 254   # lid
    222 227 228 229   248 255 256 257   251 258 259 260   254 261 262 263   # lid
    229 232 233 212   257 264 265 234   260 266 267 238   263 268 269 242   # lid
    270 270 270 270   279 280 281 282   275 276 277 278   271 272 273 274   # bottom
    270 270 270 270   282 289 290 291   278 286 287 288   274 283 284 285   # bottom
    270 270 270 270   291 298 299 300   288 295 296 297   285 292 293 294   # bottom
    270 270 270 270   300 305 306 279   297 303 304 275   294 301 302 271   # bottom
"""

# Quads per patch side: 32 * 6 * 6 * 2 = 2304 triangles before the 48 collapsed ones are dropped,
# inside the 2000-3000 triangle budget (7 would give 3080).
GRID = 6
# Seam points are evaluated from shared control points, so they agree up to rounding error; this
# fraction of the model's extent separates that from genuinely distinct points.
WELD_TOLERANCE = 1e-6
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "nmr_jax" / "assets" / "teapot.obj"


def parse_numbers(text: str, dtype: type) -> np.ndarray:
    """The numbers of a whitespace/comma separated table, flattened; '#' starts a comment."""
    lines = [line.split("#")[0].replace(",", " ") for line in text.splitlines()]
    return np.array([dtype(x) for line in lines for x in line.split()])


def control_nets() -> np.ndarray:
    """The patches' control nets, float64 [32, 4 (v), 4 (u), 3]."""
    points = parse_numbers(CONTROL_POINTS, float).reshape(306, 3)
    patches = parse_numbers(PATCHES, int).reshape(32, 16) - 1
    return points[patches].reshape(32, 4, 4, 3)


def tessellate(nets: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate each patch on a (grid+1)^2 lattice; return points [P, 3] and triangles [F, 3]."""
    t = np.linspace(0.0, 1.0, grid + 1)
    bernstein = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)
    surface = np.einsum("vj,ui,pjix->pvux", bernstein, bernstein, nets)
    lattice = np.arange((grid + 1) ** 2).reshape(grid + 1, grid + 1)
    a, b = lattice[:-1, :-1], lattice[:-1, 1:]  # (v, u), (v, u+1)
    c, d = lattice[1:, 1:], lattice[1:, :-1]  # (v+1, u+1), (v+1, u)
    # (a, b, c) and (a, c, d) turn from u towards v, so their normals are u x v: outwards.
    quads = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    offsets = np.arange(len(nets))[:, None, None] * lattice.size
    return surface.reshape(-1, 3), (quads[None] + offsets).reshape(-1, 3)


def weld(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge points closer than the tolerance (keeping the first) and drop collapsed triangles."""
    tolerance = WELD_TOLERANCE * np.ptp(points, axis=0).max()
    close = np.linalg.norm(points[:, None] - points[None], axis=-1) <= tolerance
    representative = np.argmax(close, axis=1)  # the first point each point coincides with
    kept, new_index = np.unique(representative, return_inverse=True)
    faces = new_index[faces]
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
    distinct &= faces[:, 2] != faces[:, 0]
    return points[kept], faces[distinct]


def check_orientation(vertices: np.ndarray, faces: np.ndarray) -> None:
    """Fail unless neighbours wind consistently and the winding is outward (positive volume)."""
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    if len(np.unique(edges, axis=0)) != len(edges):
        raise RuntimeError("two triangles traverse an edge in the same direction")
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    if np.einsum("ij,ij->", v0, np.cross(v1, v2)) <= 0:
        raise RuntimeError("triangles are wound inwards")


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("# Utah teapot generated by tools/make_teapot.py from Newell's Bezier patch data\n")
        f.write("# (32 bicubic patches, 306 control points); y up, spout towards +x.\n")
        np.savetxt(f, vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(f, faces + 1, fmt="f %d %d %d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="OBJ file to write")
    args = parser.parse_args()

    points, faces = tessellate(control_nets(), GRID)
    vertices, faces = weld(points, faces)
    # z up -> y up by a rotation of -90 degrees about x, (x, y, z) -> (x, z, -y): a proper
    # rotation keeps the outward winding; the spout stays on +x.
    vertices = np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1)
    # Round to the written precision first so that -0.0 (and tiny negatives) print as 0.000000.
    vertices = np.round(vertices, 6) + 0.0
    check_orientation(vertices, faces)
    write_obj(args.output, vertices, faces)
    print(f"{args.output}: {len(vertices)} vertices, {len(faces)} faces")


if __name__ == "__main__":
    main()
