"""Shard rendering benchmark on one CPU core (the process pins itself to core 0).

    .venv/bin/python bench/render.py [--vertices 5023] [--views 20] [--samples 48]

Prints, each with its baseline from the same run and the ratio:
- target views/s at 256 and 512 px for a FLAME-sized mesh (normals, UV, masks, depth; the caster is built
  once per mesh, as a shard task does): embree (ours) vs PyTorch3D's CPU rasteriser + interpolation;
- RGB views/s for a 100k-face textured scan (ray cast, texture, shading, background, camera response) vs
  the ray cast alone (the share of the time that shading takes);
- read + decode samples/s with the training decode (rgb, normal, uv, mask; no depth) at 512 px, vs reading
  the same tar members without decoding;
- bytes per sample at 256 and 512 px.
Ends with one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def per_second(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=5023)
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--samples", type=int, default=48)
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)

    import trimesh

    from p3dmm.flame.cameras import to_pytorch3d
    from p3dmm.flame.files import load_assets
    from p3dmm.flame.mesh import vertex_normals, vertex_normals_np
    from p3dmm.flame.model import FLAME
    from p3dmm.flame.render import RayCaster, pixel_normals
    from p3dmm.flame.synth import write_synthetic_flame
    from p3dmm.pipeline.render.appearance import linear_texture, pixel_albedo, render_photo, sample_look
    from p3dmm.pipeline.render.targets import render_targets, uv_region_faces
    from p3dmm.pipeline.render.views import sample_views
    from p3dmm.pipeline.shards.format import decode_sample, encode_flags, encode_sample
    from p3dmm.pipeline.shards.writer import write_shard
    from p3dmm.pipeline.synth.nphm import cylinder_uv
    from p3dmm.pipeline.synth.scans import bake_texture, scan_albedo

    folder = Path(tempfile.mkdtemp())
    write_synthetic_flame(folder / "flame", n_vertices=args.vertices, seed=0)
    assets = load_assets(folder / "flame")
    faces = assets.model.faces
    with torch.no_grad():
        verts = FLAME(assets)().vertices[0].double().numpy()
    region = uv_region_faces(assets)
    centre = verts[np.unique(faces[region])].mean(0)
    extent = float(np.ptp(verts[np.unique(faces[region])], axis=0).max())
    caster = RayCaster(verts, faces)
    results: dict[str, float] = {"vertices": len(verts), "faces": len(faces)}
    rows = []

    def row(name, ours, base, unit, base_name):
        ratio = ours / base if base else float("nan")
        rows.append(f"{name:<34} ours {ours:9.2f} {unit}   {base_name} {base:9.2f}   ratio {ratio:6.2f}x")
        results[name] = ours
        results[f"{name} baseline"] = base

    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.renderer.mesh.utils import interpolate_face_attributes
    from pytorch3d.structures import Meshes

    mesh = Meshes([torch.tensor(verts, dtype=torch.float32)], [torch.from_numpy(faces)])
    uv_corners = torch.tensor(assets.uv.vt[assets.uv.ft], dtype=torch.float32)
    vn = vertex_normals(torch.tensor(verts, dtype=torch.float32)[None], torch.from_numpy(faces))[0]
    n_corners = vn[torch.from_numpy(faces)]
    for size in (256, 512):
        cams, _ = sample_views(np.random.default_rng(0), args.views, centre, np.eye(3), extent, size)
        it = iter(range(10**9))

        def ours(cams=cams, it=it):
            k = next(it) % args.views
            render_targets(caster, cams[k], np.eye(3), assets.uv.vt, assets.uv.ft, region)

        ours_rate = per_second(ours, args.views)

        settings = RasterizationSettings(image_size=(size, size), faces_per_pixel=1, blur_radius=0.0, bin_size=0)
        it2 = iter(range(10**9))

        def pytorch3d(cams=cams, settings=settings, it2=it2):
            k = next(it2) % args.views
            frags = MeshRasterizer(cameras=to_pytorch3d(cams[k].to(dtype=torch.float32)), raster_settings=settings)(mesh)
            interpolate_face_attributes(frags.pix_to_face, frags.bary_coords, uv_corners)
            interpolate_face_attributes(frags.pix_to_face, frags.bary_coords, n_corners)

        base_rate = per_second(pytorch3d, max(2, args.views // 10))
        row(f"target views/s @{size}", ours_rate, base_rate, "views/s", "pytorch3d-cpu")

    # a 100k-face textured scan: the subdivided head with the demo's skin texture
    sv, sf, edge = verts, faces, 0.006
    while len(sf) < 100_000:
        sv, sf = trimesh.remesh.subdivide_to_size(verts, faces, max_edge=edge)
        sv, sf, edge = np.asarray(sv), np.asarray(sf, np.int64), edge * 0.9
    face_uv = cylinder_uv(sv, sf)
    texture = linear_texture(bake_texture(face_uv, sf, scan_albedo(assets, verts, sv, np.random.default_rng(0)), 512))
    start = time.perf_counter()
    scan_caster = RayCaster(sv, sf)
    build = time.perf_counter() - start
    normals = vertex_normals_np(sv, sf)
    results["scan faces"] = len(sf)
    for size in (256, 512):
        cams, _ = sample_views(np.random.default_rng(1), args.views, centre, np.eye(3), extent, size)
        rng = np.random.default_rng(0)
        it = iter(range(10**9))

        def rgb(cams=cams, rng=rng, it=it):
            hits = scan_caster.cast(cams[next(it) % args.views])
            albedo = pixel_albedo(hits, sf, face_uv=face_uv, texture=texture)
            render_photo(hits, pixel_normals(hits, normals, sf), albedo, sample_look(rng), rng)

        rate = per_second(rgb, max(4, args.views // 2))
        it_cast = iter(range(10**9))
        cast_only = per_second(lambda cams=cams, it_cast=it_cast: scan_caster.cast(cams[next(it_cast) % args.views]),
                               max(4, args.views // 2))
        row(f"RGB views/s @{size} (100k faces)", rate, cast_only, "views/s", "ray cast only")
    results["scan BVH build s"] = build
    rows.append(f"{'scan BVH build (once per scan)':<34} {build * 1000:.0f} ms")

    # shards at 256 and 512 px: bytes per sample, and read + decode with the training decode
    import webdataset as wds

    for size in (256, 512):
        cams, _ = sample_views(np.random.default_rng(2), args.samples, centre, np.eye(3), extent, size)
        rng = np.random.default_rng(0)

        def samples(cams=cams, rng=rng, size=size):
            for k in range(args.samples):
                t = render_targets(caster, cams[k], np.eye(3), assets.uv.vt, assets.uv.ft, region)
                hits = scan_caster.cast(cams[k])
                albedo = pixel_albedo(hits, sf, face_uv=face_uv, texture=texture)
                image = render_photo(hits, pixel_normals(hits, normals, sf), albedo, sample_look(rng), rng)
                yield f"s{k:05d}", encode_sample(f"s{k:05d}", image, t.normal, t.uv, encode_flags(t.mask, t.face_mask),
                                                 t.depth, {"k": k})

        path = folder / f"bench-{size}.tar"
        entry = write_shard(path, samples())
        results[f"bytes/sample @{size}"] = entry["bytes"] / entry["samples"]
        rows.append(f"{'bytes/sample @' + str(size):<34} {entry['bytes'] / entry['samples'] / 1e6:.3f} MB")
        if size == 512:
            def read_only(path=path):
                for _ in wds.WebDataset(str(path), shardshuffle=False):
                    pass

            def read_decode(path=path):
                for members in wds.WebDataset(str(path), shardshuffle=False):
                    decode_sample(members, depth=False)

            raw = per_second(read_only, 2) * args.samples
            dec = per_second(read_decode, 2) * args.samples
            row("read+decode samples/s @512", dec, raw, "samples/s", "read only")

    print(f"one core, {len(verts)}-vertex FLAME ({len(faces)} faces), scan {len(sf)} faces")
    for line in rows:
        print(line)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
