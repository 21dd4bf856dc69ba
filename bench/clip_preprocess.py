"""CLIP image preprocessing before/after (issue #14: the image tower is bound by JPEG work): images/s
of the previous ``clipmodel.preprocess`` pipeline against the current one, in this process, in the
same run, and how much the pixels and the embeddings move.

    .venv/bin/python bench/clip_preprocess.py [--seconds 1.0] [--rounds 3] [--out bench/results]

"before" is a verbatim copy of the pipeline as it was (``_before`` below: full-size decode, exact
bicubic resize, float32 arithmetic normalisation); "after" is ``clipmodel.preprocess.preprocess``
(JPEG draft decoding, ``reducing_gap``, table normalisation). ``exact=True`` of the new module must
give the "before" pixels bit for bit (checked, reported).

Inputs, each encoded as an upload would be (JPEG quality 90, or PNG):

- the colour photographs of scikit-image's data module at their own sizes (300x451 to 1411x1411)
  and its greyscale ``camera``;
- generated pictures (``testkit.clipdata.picture``) of 320x240 (no draft applies), 640x480 (the
  size of the earlier benchmarks), 1920x1080 and 4000x3000 (phone photos) as JPEG, and 1920x1080
  and 4000x3000 as PNG (no draft; ``reducing_gap`` applies to 4000x3000).

Speed: ``--rounds`` rounds, before and after alternating in order, each ``--seconds`` of calls
cycling through the group's images, one thread; pooled images/s = images / wall time, and CPU ms
per image (``time.process_time``: less sensitive to other work on a shared machine).

Difference, per group: max and mean absolute difference of the ``[3, 224, 224]`` tensors after vs
before, in normalised units (one 8-bit level is 1 / (255 * std) ~= 0.0146) and, for scale, the same
for before vs the lossless source picture (what JPEG q90 itself changes). Embeddings: the image tower
of the random CLIP (``clipmodel.random.build(0)``, ``clipmodel.export.towers``), cosine similarity
after vs before, JPEG vs lossless source, and between distinct images of the group (what "unrelated"
looks like for this random model).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from clipmodel import preprocess  # noqa: E402
from testkit.clipdata import encode, picture  # noqa: E402

SIZE = 224
FloatArray = npt.NDArray[np.float32]


# -- before: clipmodel/preprocess.py as of commit 3f99e70 (errors handling left out) ---------------


def _before_decode(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=sorted(preprocess.FORMATS))
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def _before_resize_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new_w, new_h = size, max(size, int(size * height / width))
    else:
        new_w, new_h = max(size, int(size * width / height)), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


_MEAN = np.asarray(preprocess.CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(preprocess.CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


def _before_normalise(image: Image.Image) -> FloatArray:
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    out: FloatArray = (pixels - _MEAN) / _STD
    return out


def before(data: bytes) -> FloatArray:
    return _before_normalise(_before_resize_crop(_before_decode(data), SIZE))


def after(data: bytes) -> FloatArray:
    return preprocess.preprocess(data, SIZE)


def lossless(image: Image.Image) -> FloatArray:
    """The exact pipeline on the in-memory source picture (no encoding at all)."""
    return _before_normalise(_before_resize_crop(image.convert("RGB"), SIZE))


# -- inputs ----------------------------------------------------------------------------------------


def photographs() -> list[tuple[str, Image.Image]]:
    from skimage import data as sk

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    out = [(name, Image.fromarray(getattr(sk, name)())) for name in names]
    out.append(("motorcycle", Image.fromarray(sk.stereo_motorcycle()[0])))
    out.append(("camera (grey)", Image.fromarray(sk.camera())))
    return out


def groups() -> list[dict[str, Any]]:
    """[{"name", "format", "sources": [PIL images], "data": [encoded bytes], "sizes"}]"""
    spec: list[tuple[str, str, tuple[int, int], int]] = [
        ("generated 320x240", "JPEG", (320, 240), 16),
        ("generated 640x480", "JPEG", (640, 480), 16),
        ("generated 1920x1080", "JPEG", (1920, 1080), 6),
        ("generated 4000x3000", "JPEG", (4000, 3000), 3),
        ("generated 1920x1080", "PNG", (1920, 1080), 3),
        ("generated 4000x3000", "PNG", (4000, 3000), 2),
    ]
    photos = photographs()
    sources = [image for _, image in photos]
    out: list[dict[str, Any]] = [
        {
            "name": f"scikit-image photographs ({len(photos)})",
            "format": "JPEG",
            "names": [name for name, _ in photos],
            "sources": sources,
            "data": [encode(image.convert("RGB") if image.mode == "RGBA" else image, "JPEG") for image in sources],
        }
    ]
    for name, fmt, size, count in spec:
        pics = [picture(1000 + i, size) for i in range(count)]
        out.append({"name": name, "format": fmt, "sources": pics, "data": [encode(p, fmt) for p in pics]})
    return out


# -- measurement -----------------------------------------------------------------------------------


def timed(fn: Callable[[bytes], Any], items: list[bytes], seconds: float) -> tuple[int, float, float]:
    """(images, wall s, CPU s) of calling ``fn`` on ``items`` in turn for ``seconds`` (>= 3 calls)."""
    fn(items[0])
    n = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while n < 3 or time.perf_counter() - wall0 < seconds:
        fn(items[n % len(items)])
        n += 1
    return n, time.perf_counter() - wall0, time.process_time() - cpu0


def speed(items: list[bytes], rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    fns = {"before": before, "after": after}
    totals = {label: [0, 0.0, 0.0] for label in fns}
    per_round: dict[str, list[float]] = {label: [] for label in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for label in order:
            n, wall, cpu = timed(fns[label], items, seconds)
            totals[label][0] += n
            totals[label][1] += wall
            totals[label][2] += cpu
            per_round[label].append(round(n / wall, 1))
    return {
        label: {
            "images_s": t[0] / t[1],
            "cpu_ms": 1e3 * t[2] / t[0],
            "per_round": per_round[label],  # type: ignore[dict-item]
        }
        for label, t in totals.items()
    }


def stages(items: list[bytes], seconds: float) -> dict[str, dict[str, float]]:
    """ms per image of each stage, before and after (one image size: the group's)."""
    decoded_b = [_before_decode(d) for d in items]
    decoded_a = [preprocess.decode(d, draft=SIZE) for d in items]
    cropped_b = [_before_resize_crop(im, SIZE) for im in decoded_b]
    cropped_a = [preprocess.resize_crop(im, SIZE) for im in decoded_a]

    def ms(fn: Callable[[int], Any]) -> float:
        n, wall, _ = timed(lambda i: fn(int(i)), list(range(len(items))), seconds)  # type: ignore[arg-type]
        return 1e3 * wall / n

    return {
        "before": {
            "decode": ms(lambda i: _before_decode(items[i])),
            "resize_crop": ms(lambda i: _before_resize_crop(decoded_b[i], SIZE)),
            "normalise": ms(lambda i: _before_normalise(cropped_b[i])),
        },
        "after": {
            "decode": ms(lambda i: preprocess.decode(items[i], draft=SIZE)),
            "resize_crop": ms(lambda i: preprocess.resize_crop(decoded_a[i], SIZE)),
            "normalise": ms(lambda i: preprocess.normalise(cropped_a[i])),
        },
    }


def cosines(a: FloatArray, b: FloatArray) -> FloatArray:
    out: FloatArray = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return out


def difference(group: dict[str, Any], tower: Any) -> dict[str, Any]:
    import torch

    old = np.stack([before(d) for d in group["data"]])
    new = np.stack([after(d) for d in group["data"]])
    exact = np.stack([preprocess.preprocess(d, SIZE, exact=True) for d in group["data"]])
    src = np.stack([lossless(im) for im in group["sources"]])
    with torch.inference_mode():
        e_old, e_new, e_src = (tower(torch.from_numpy(x)).numpy() for x in (old, new, src))
    d_new, d_src = np.abs(new - old), np.abs(old - src)
    level = 1.0 / (255.0 * _STD)  # one 8-bit level per channel, in normalised units
    unrelated = [
        float(cosines(e_old[i : i + 1], e_old[j : j + 1])[0])
        for i in range(len(e_old))
        for j in range(i + 1, len(e_old))
    ]
    cos_items = cosines(e_new, e_old)
    per_item = [
        {
            "name": name,
            "size": list(Image.open(io.BytesIO(data)).size),
            "draft": preprocess.draft_scale(Image.open(io.BytesIO(data)).size, SIZE)
            if group["format"] == "JPEG"
            else 1,
            "max": float(d_new[i].max()),
            "mean": float(d_new[i].mean()),
            "jpeg_mean": float(d_src[i].mean()),
            "cos": float(cos_items[i]),
        }
        for i, (name, data) in enumerate(zip(group.get("names", []), group["data"], strict=False))
    ]
    return {
        "per_item": per_item,
        "exact_equals_before": bool(np.array_equal(exact, old)),
        "after_vs_before": {
            "max": float(d_new.max()),
            "mean": float(d_new.mean()),
            "mean_levels": float((d_new / level).mean()),
            "share_over_1_level": float((d_new > level * 1.01).mean()),
        },
        "before_vs_source": {"max": float(d_src.max()), "mean": float(d_src.mean())},
        "cos_after_before": {"min": float(cosines(e_new, e_old).min()), "mean": float(cosines(e_new, e_old).mean())},
        "cos_before_source": {"min": float(cosines(e_old, e_src).min()), "mean": float(cosines(e_old, e_src).mean())},
        "cos_unrelated_mean": float(np.mean(unrelated)) if unrelated else None,
    }


# -- report ----------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# CLIP image preprocessing: before / after (issue #14)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Date: {result['date']}; commit {result['commit']}; {result['cpus']} CPUs ({result['cpu']}); "
        f"Pillow {result['pillow']}, numpy {result['numpy']}; total run {result['total_s']:.0f} s",
        f"- Load average (1/5/15 min) at start {result['load_start']}, at end {result['load_end']}",
        f"- One thread, in this process; {result['rounds']} rounds of {result['seconds']} s per pipeline "
        "and group, before/after alternating; pooled",
        "- before: the pipeline of commit 3f99e70 (copied into the script); after: "
        "`clipmodel.preprocess.preprocess` (JPEG draft to >= 224, `reducing_gap=3.0`, table normalisation)",
        "",
        "## Speed",
        "",
        "| input | format | images | draft | before images/s | after images/s | speed-up "
        "| CPU ms/image before / after |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for g in result["groups"]:
        s = g["speed"]
        b, a = s["before"], s["after"]
        lines.append(
            f"| {g['name']} | {g['format']} | {g['count']} | {g['draft']} | {b['images_s']:,.0f} | "
            f"{a['images_s']:,.0f} | {a['images_s'] / b['images_s']:.2f}x | {b['cpu_ms']:.2f} / {a['cpu_ms']:.2f} |"
        )
    lines += [
        "",
        "Per stage, generated 640x480 JPEG (ms per image, one thread):",
        "",
        "| stage | before | after |",
        "| --- | ---: | ---: |",
    ]
    st = result["stages_640x480"]
    for stage in ("decode", "resize_crop", "normalise"):
        lines.append(f"| {stage} | {st['before'][stage]:.2f} | {st['after'][stage]:.2f} |")
    lines += [
        "",
        "## Difference",
        "",
        "Pixels: `[3, 224, 224]` float32 after normalisation (one 8-bit level ~= 0.0146). Embeddings: the random "
        "CLIP's image tower (seed 0, L2-normalised). \"JPEG q90 itself\": before's pixels of the JPEG against the "
        "same pipeline on the lossless source picture.",
        "",
        "| input | format | exact=True == before | after vs before: max / mean abs | mean in levels | "
        "values > 1 level | JPEG q90 itself: max / mean abs | cos after/before: min / mean | "
        "cos JPEG/source: min / mean | cos between distinct images (mean) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in result["groups"]:
        d = g["difference"]
        n, s = d["after_vs_before"], d["before_vs_source"]
        unrelated = "-" if d["cos_unrelated_mean"] is None else f"{d['cos_unrelated_mean']:.4f}"
        lines.append(
            f"| {g['name']} | {g['format']} | {'yes' if d['exact_equals_before'] else 'NO'} | "
            f"{n['max']:.4f} / {n['mean']:.5f} | {n['mean_levels']:.3f} | {100 * n['share_over_1_level']:.2f}% | "
            f"{s['max']:.4f} / {s['mean']:.5f} | "
            f"{d['cos_after_before']['min']:.6f} / {d['cos_after_before']['mean']:.6f} | "
            f"{d['cos_before_source']['min']:.6f} / {d['cos_before_source']['mean']:.6f} | {unrelated} |"
        )
    photos = next((g for g in result["groups"] if g["difference"]["per_item"]), None)
    if photos is not None:
        lines += [
            "",
            f"Per photograph ({photos['name']}, JPEG q90):",
            "",
            "| photograph | size | draft | after vs before: max / mean abs | JPEG q90 itself: mean abs "
            "| cos after/before |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for item in photos["difference"]["per_item"]:
            draft = "none" if item["draft"] == 1 else f"1/{item['draft']}"
            lines.append(
                f"| {item['name']} | {item['size'][0]}x{item['size'][1]} | {draft} | {item['max']:.4f} / "
                f"{item['mean']:.5f} | {item['jpeg_mean']:.5f} | {item['cos']:.6f} |"
            )
    lines += ["", "## Interpretation", "", "(Written by hand after a run; a rerun leaves this placeholder.)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per pipeline, group and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    from clipmodel import export
    from clipmodel import random as random_clip

    began = time.time()
    load_start = machine.loadavg()
    _, tower = export.towers(random_clip.build(0))
    result: dict[str, Any] = {
        "command": " ".join([".venv/bin/python bench/clip_preprocess.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": machine.git_commit(ROOT),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": machine.cpu_model(),
        "pillow": machine.pkg_version("pillow"),
        "numpy": np.__version__,
        "load_start": load_start,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "groups": [],
    }
    for group in groups():
        data = group["data"]
        sizes = {Image.open(io.BytesIO(d)).size for d in data}
        scales = sorted({preprocess.draft_scale(s, SIZE) for s in sizes}) if group["format"] == "JPEG" else [1]
        row: dict[str, Any] = {
            "name": group["name"],
            "format": group["format"],
            "count": len(data),
            "draft": ", ".join("none" if s == 1 else f"1/{s}" for s in scales),
            "speed": speed(data, args.rounds, args.seconds),
            "difference": difference(group, tower),
        }
        if group["name"] == "generated 640x480":
            result["stages_640x480"] = stages(data, args.seconds)
        result["groups"].append(row)
        sp = row["speed"]
        print(
            f"{group['name'][:40]:>40} {group['format']:>4}: before {sp['before']['images_s']:7.1f}/s "
            f"after {sp['after']['images_s']:7.1f}/s  diff max {row['difference']['after_vs_before']['max']:.4f} "
            f"mean {row['difference']['after_vs_before']['mean']:.5f}  load {machine.loadavg()}",
            file=sys.stderr,
            flush=True,
        )
    result["load_end"] = machine.loadavg()
    result["total_s"] = time.time() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "clip-preprocess.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "clip-preprocess.md").write_text(markdown(result))
    print(f"wrote {args.out / 'clip-preprocess.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
