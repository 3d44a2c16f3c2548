# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Scoring image files with a trained, converted or exported scorer: `ipa-score` (installed by
pip) or `python -m ipa_jax.score`.

  ipa-score --model=/ckpt/i2pa photo1.jpg photos/ 'drafts/**/*.png' [--format=tsv|csv|json]
      [--output=FILE] [--resize=crop|squash] [--normalize=imagenet|unit]
  ipa-score compare --model=/ckpt/i2pa a.jpg b.jpg
  ipa-score --model=/ckpt/i2pa --video=clip.mp4 [--every=25] [--video_out=DIR]
  ipa-score --model=/runs/full --history=past_posts.csv --sidecars=drafts/ drafts/
  ipa-score --model=/ckpt/i2pa photos/ --report=report.html

scores files, folders (recursively) and globs, best first (tsv: `path<TAB>log_score` lines,
then one line with the files that could not be scored and why; csv and json add the rank and
`popularity = exp(log_score)`); `compare` says how likely A beats B. Files are read by
`ipa_jax.images` (every PIL mode, the same pixels as data preparation; images above
`--max_pixels` are refused from their header, undecoded) and prepared exactly as the scorer's
`InputSpec` says: "crop" runs ipa_jax's own evaluation path (`images.read_rgb`, then
`input_pipeline.resize_and_crop`: an RGB JPEG decoded by TensorFlow as in training, so
identical to training-time evaluation); "squash" is `images.load_rgb` and PIL's bilinear
resize of both sides, the pixels of the released I2PA code (`torchvision.transforms.Resize((S,
S))` on a PIL image). `--resize` and `--normalize` override the model's stored preprocessing.
A retrieval-augmented model (configs/full.py) reads each image's f_ret from `--history` and its
depth map from `--sidecars` (`ipa_jax.history`); `--report` writes a self-contained HTML page
with a Grad-CAM heatmap per image (`ipa_jax.score_report`).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from ipa_jax import images, model_card, scoring

Skipped = list[tuple[str, str]]  # (path, reason)


def prepare_pixels(pixels: np.ndarray, spec: scoring.InputSpec) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 `[size, size, 3]` as `spec` prepares an image."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}")
    if spec.resize == "squash":
        image = Image.fromarray(pixels).resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    # TensorFlow only for "crop": a converted squash model should not pay its import.
    from ipa_jax import input_pipeline  # noqa: PLC0415

    return input_pipeline.resize_and_crop(pixels, short_side=spec.resize_short_side,
                                          crop=spec.size).numpy()


def load_image(path: str, spec: scoring.InputSpec, *,
               max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """One file -> uint8 `[size, size, 3]` as `spec` prepares it; raises if unreadable.

    Raises `images.ImageTooLarge` above `max_pixels`, from the file's header (undecoded).
    "squash" reads with PIL (`images.load_rgb`, the released I2PA code's pixels), "crop" as
    ipa_jax evaluates (`images.read_rgb`).
    """
    read = images.load_rgb if spec.resize == "squash" else images.read_rgb
    return prepare_pixels(read(path, max_pixels=max_pixels), spec)


def _load_all(items, load, spec) -> tuple[np.ndarray, list, Skipped]:
    """(uint8 `[N, size, size, 3]`, the N items kept, [(item, reason)] skipped) of `load`."""
    loaded, kept, skipped = [], [], []
    for item in items:
        try:
            loaded.append(load(item))
        # One unreadable file (missing, truncated, not an image, too large, a format the
        # decoder lacks) must not stop the others; its reason is reported instead.
        except Exception as e:  # noqa: BLE001
            skipped.append((item, f"{type(e).__name__}: {error_line(e)}"))
            continue
        kept.append(item)
    array = np.stack(loaded) if loaded else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    return array, kept, skipped


def load_images(paths: Sequence[str], spec: scoring.InputSpec, *,
                max_pixels: int = images.MAX_PIXELS) -> tuple[np.ndarray, list[str], Skipped]:
    """Files -> (uint8 `[N, size, size, 3]`, the N paths kept, [(path, reason)] skipped)."""
    return _load_all(paths, lambda p: load_image(p, spec, max_pixels=max_pixels), spec)


def error_line(error: Exception) -> str:
    """The error's message on one line, without TensorFlow's `{{function_node ...}}` tag."""
    lines = re.sub(r"\{\{.*?\}\}\s*", "", str(error)).strip().splitlines()
    return lines[0] if lines else "unreadable"


def score_files(scorer: scoring.Scorer, paths: Sequence[str], batch_size: int = 32, *,
                max_pixels: int = images.MAX_PIXELS,
                progress: bool = False) -> tuple[list[str], np.ndarray, Skipped]:
    """Log-scores of image files in jitted batches of one fixed size.

    Args:
      scorer: from `scoring.load_scorer`.
      paths: image files; unreadable ones (and those above `max_pixels`) are skipped and
        reported.
      batch_size: images per device call (the last batch is padded, so one compilation).
      max_pixels: the largest image read, in pixels (its header is checked before decoding).
      progress: a progress bar (stderr) over the files.
    Returns:
      (the paths scored, float32 log-scores in the same order, [(path, reason)] skipped).
    """
    return _score_batches(scorer, paths, batch_size, progress,
                          lambda chunk: load_images(chunk, scorer.spec, max_pixels=max_pixels))


def score_pixels(scorer: scoring.Scorer, arrays, batch_size: int = 32
                 ) -> tuple[list[int], np.ndarray, Skipped]:
    """`score_files` for pixels: uint8 [N, H, W, 3] or a list of [H, W, 3] arrays of any size;
    the items are their indices (a malformed array is skipped with the reason)."""
    return _score_batches(scorer, list(range(len(arrays))), batch_size, False, lambda chunk:
                          _load_all(chunk, lambda i: prepare_pixels(arrays[i], scorer.spec),
                                    scorer.spec))


def _score_batches(scorer, items: list, batch_size: int, progress: bool, load_chunk):
    """(items kept, log-scores, skipped) in jitted batches of one fixed size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = max(1, min(batch_size, len(items)))
    if isinstance(scorer, scoring.ExportedScorer):  # a SavedModel: a host call, never jitted
        apply, variables = (lambda _, x: scorer(x)), None
    else:
        apply = jax.jit(lambda v, x: scorer(v, x))  # a Scorer holds dicts: jit cannot hash it
        variables = jax.device_put(scorer.variables)
    kept, skipped, outputs = [], [], []
    bar = tqdm(total=len(items), unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(items), size):
        batch, chunk_kept, chunk_skipped = load_chunk(items[start:start + size])
        bar.update(len(chunk_kept) + len(chunk_skipped))
        skipped += chunk_skipped
        if not chunk_kept:
            continue
        padded = np.zeros((size, *batch.shape[1:]), np.uint8)
        padded[:len(batch)] = batch
        # Dispatch is asynchronous: the next files decode while this batch runs.
        outputs.append((apply(variables, padded), len(batch)))
        kept += chunk_kept
    scores = [np.asarray(out)[:n] for out, n in outputs]
    bar.close()
    return kept, np.concatenate(scores) if scores else np.zeros(0, np.float32), skipped


def list_images_dir(directory: str) -> list[str]:
    """The visible regular files of `directory`, sorted (non-images are reported skipped)."""
    names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    return [p for p in (os.path.join(directory, n) for n in names) if os.path.isfile(p)]


def _visible_files_under(directory: str) -> list[str]:
    """Every visible regular file under `directory`, recursively, sorted by path."""
    out = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return [p for p in out if os.path.isfile(p)]


def expand_inputs(items: Sequence[str]) -> tuple[list[str], Skipped]:
    """Files as given, folders recursively (visible files), globs (`**` recursive) expanded,
    each path once in the order given; what matches nothing is reported, not dropped."""
    paths, missing, seen = [], [], set()
    for item in items:
        if os.path.isdir(item):
            found = _visible_files_under(item)
        elif os.path.exists(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                missing.append((item, "no such file, folder or match"))
        for path in found:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths, missing


FORMATS = ("tsv", "csv", "json")


def _exp(x: float) -> float:
    """exp(x), inf past float64's range instead of OverflowError."""
    return math.exp(x) if x < 709.0 else math.inf


def format_results(kept: Sequence[str], scores: np.ndarray, skipped: Skipped,
                   fmt: str = "tsv", card: dict | None = None) -> str:
    """Best first. tsv: `path<TAB>log_score` lines, then `# skipped N of M files[: why]`;
    csv: `rank,path,log_score,popularity[,percentile,level]` with a header; json: {"scores":
    [{"rank", "path", "log_score", "popularity"[, "percentile", "level"]}], "skipped":
    [{"path", "reason"}]}. popularity = exp(score); percentile and level against the model
    card's test distribution, when it has one (`ipa_jax.model_card`)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    rows = [(rank, kept[i], float(scores[i])) for rank, i in enumerate(order, 1)]
    pct = model_card.percentiles(card, [v for _, _, v in rows])
    extra = ([{}] * len(rows) if pct is None else
             [{"percentile": round(float(p), 2), "level": lv}
              for p, lv in zip(pct, model_card.levels(pct), strict=True)])
    if fmt == "json":
        return json.dumps({"scores": [{"rank": r, "path": p, "log_score": v,
                                       "popularity": _exp(v), **x}
                                      for (r, p, v), x in zip(rows, extra, strict=True)],
                           "skipped": [{"path": p, "reason": why} for p, why in skipped]},
                          indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["rank", "path", "log_score", "popularity", *extra[0]] if rows else
                        ["rank", "path", "log_score", "popularity"])
        writer.writerows((r, p, f"{v:.6f}", f"{_exp(v):.6g}", *x.values())
                         for (r, p, v), x in zip(rows, extra, strict=True))
        return buf.getvalue().rstrip("\n")
    lines = [f"{p}\t{v:.6f}" for _, p, v in rows]
    summary = f"# skipped {len(skipped)} of {len(kept) + len(skipped)} files"
    if skipped:
        summary += ": " + "; ".join(f"{p} ({why})" for p, why in skipped)
    return "\n".join([*lines, summary])


def compare_text(scorer: scoring.Scorer, path_a: str, path_b: str, o_a: float,
                 o_b: float) -> str:
    """What the model says of A against B: the I2PA probability sigmoid(o_A - o_B) for a model
    trained with the pairwise BCE, the likes ratio s_A / s_B = exp(o_A - o_B) for the ratio and
    log-likes losses; both, with a note, when the model does not say how it was trained."""
    d = o_a - o_b
    probability = (f"P(A is more popular than B) = sigmoid(o_A - o_B) = "
                   f"{0.5 * (1.0 + math.tanh(d / 2)):.4f}")  # no overflow for any d
    ratio = f"predicted likes ratio s_A / s_B = exp(o_A - o_B) = {_exp(d):.4g}"
    lines = [f"A {path_a}: log-score {o_a:.6f}", f"B {path_b}: log-score {o_b:.6f}"]
    if scorer.objective == "i2pa_bce":
        return "\n".join([*lines, probability])
    if scorer.objective in ("likes_ratio", "log_likes_mse"):
        return "\n".join([*lines, ratio])
    return "\n".join([*lines, probability, ratio, "(the model does not record its training "
                                                   "objective: read the line that fits it)"])


def _parser(compare: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipa-score compare" if compare else "ipa-score",
        description="Which of two images a model prefers." if compare else
        "Scores image files, folders (recursively) and globs with a trained or converted "
        "model, best first; `ipa-score compare --model=M A B` compares two.")
    p.add_argument("--model", required=True,
                   help="an ipa_jax workdir, a `python -m ipa_jax.convert` output or a "
                        "`python -m ipa_jax.export` SavedModel")
    p.add_argument("--batch_size", type=int, default=32, help="images per device call")
    p.add_argument("--max_pixels", type=int, default=images.MAX_PIXELS,
                   help="larger images are skipped, from their header, undecoded")
    p.add_argument("--resize", choices=("crop", "squash"),
                   help="override the model's stored preprocessing")
    p.add_argument("--normalize", choices=("imagenet", "unit"),
                   help="override the model's stored pixel normalisation")
    _add_history_flags(p)
    if compare:
        p.add_argument("a")
        p.add_argument("b")
        return p
    p.add_argument("inputs", nargs="*", help="image files, folders (recursive) or globs")
    p.add_argument("--images_dir", help="score every file of this folder too (not recursive)")
    p.add_argument("--format", choices=FORMATS, default="tsv")
    p.add_argument("--output", help="write the results here instead of printing them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--video", help="a video: score every --every-th frame, write the best frame "
                                   "as a JPEG thumbnail and a PNG plot of the score over time")
    p.add_argument("--every", type=int, default=25, help="--video: frames between scored ones")
    p.add_argument("--video_out", default=".", help="--video: where the JPEG and PNG go")
    p.add_argument("--report", help="write a self-contained HTML report here: the gallery by "
                                    "score with a Grad-CAM heatmap per image, the histogram")
    return p


def _add_history_flags(p: argparse.ArgumentParser) -> None:
    """The retrieval-augmented model's inputs (`ipa_jax.history`)."""
    p.add_argument("--history", help="retrieval-augmented models: the creator's past posts, an "
                                     "Instagram-format folder or a CSV of image,likes,timestamp")
    p.add_argument("--user", help="--history: the creator, when the folder holds several")
    p.add_argument("--history_sidecars", help="--history CSV: the folder of its posts' "
                                              "keypoints/, background/, captions/ (default: the "
                                              "CSV's folder)")
    p.add_argument("--sidecars", help="retrieval-augmented models: the folder of the images' "
                                      "depth/, keypoints/, background/, captions/ sidecars, by "
                                      "file name without extension (default: each image's "
                                      "own folder)")
    p.add_argument("--annotate", default="",
                   help="retrieval-augmented models: write the images' missing sidecars of "
                        "these signals first (e.g. depth,keypoints,background,captions) with "
                        "the annotators below (the annotate extras)")
    from ipa_jax.annotate import backends  # noqa: PLC0415 - light: no model library imported

    backends.add_model_flags(p)


def main(argv: Sequence[str] | None = None) -> None:
    """`ipa-score` / `python -m ipa_jax.score` (argv without the program name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    compare = bool(argv) and argv[0] == "compare"
    args = _parser(compare).parse_args(argv[1:] if compare else argv)
    try:
        scorer = _load(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"Cannot load a scorer: {e}") from None
    if compare:
        kept, scores, skipped, _ = _score_paths(scorer, args, [args.a, args.b], 2,
                                                progress=False)
        if skipped:
            raise SystemExit("Cannot compare: " + "; ".join(f"{p} ({w})" for p, w in skipped))
        print(compare_text(scorer, args.a, args.b, float(scores[0]), float(scores[1])))
        return
    if args.video:
        return _score_video(scorer, args)
    paths, missing = expand_inputs(args.inputs)
    if args.images_dir:
        paths += [p for p in list_images_dir(args.images_dir) if p not in set(paths)]
    if not paths:
        raise SystemExit("No images: pass files, folders or globs after the flags "
                         f"({'; '.join(p for p, _ in missing) or 'none given'}).")
    if args.report and isinstance(scorer, scoring.ExportedScorer):
        raise SystemExit(f"--report computes Grad-CAM heatmaps with jax.grad: pass the workdir "
                         f"or converted checkpoint that {args.model} was exported from")
    kept, scores, skipped, explain = _score_paths(scorer, args, paths, args.batch_size,
                                                  progress=not args.quiet)
    text = format_results(kept, scores, missing + skipped, args.format, scorer.card)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"{len(kept)} scored, {len(missing) + len(skipped)} skipped: {args.output}",
              file=sys.stderr)
    else:
        print(text)
    if args.report and kept:
        explain(args.report, missing + skipped)
        print(f"report: {args.report}", file=sys.stderr)
    if not kept:
        sys.exit(1)


def _load(args):
    """The scorer of --model, with --resize/--normalize; a retrieval-augmented model keeps its
    training preprocessing and takes --history instead."""
    from ipa_jax import history  # noqa: PLC0415

    scorer = scoring.load_scorer(args.model)
    if isinstance(scorer, history.HistoryScorer):
        if args.resize or args.normalize:
            raise ValueError(f"{args.model} is a retrieval-augmented model: it is scored with "
                             "the preprocessing it was trained with (no --resize/--normalize)")
        if args.history:
            scorer.use_history(args.history, user=args.user, sidecar_dir=args.history_sidecars)
        if getattr(args, "video", None):
            raise ValueError(f"{args.model} is a retrieval-augmented model: it needs each "
                             "frame's depth map; score videos with a backbone scorer")
        return scorer
    if args.history or args.sidecars or args.annotate:
        raise ValueError("--history, --sidecars and --annotate are for retrieval-augmented "
                         f"models; {args.model} scores each image on its own")
    return scoring.with_input(scorer, resize=args.resize, normalize=args.normalize)


def _score_paths(scorer, args, paths: list[str], batch_size: int, *, progress: bool):
    """(kept, scores, skipped, explain) of `paths` by any scorer: a retrieval-augmented one with
    the --history bank and the --sidecars (its notes: the fallback, missing sidecars, on
    stderr). `explain(html_path, skipped)` writes the --report page of the kept images."""
    from ipa_jax import history, score_report  # noqa: PLC0415

    if not isinstance(scorer, history.HistoryScorer):
        kept, scores, skipped = score_files(scorer, paths, batch_size,
                                            max_pixels=args.max_pixels, progress=progress)
        return kept, scores, skipped, lambda path, all_skipped: score_report.report_for_scorer(
            scorer, kept, scores, all_skipped, path, batch_size, max_pixels=args.max_pixels)
    notes = []
    if scorer.history is not None:
        print(f"history: {len(scorer.history.posts)} posts of {args.history}" + (
            f"; rows skipped: {dict(scorer.history_skipped)}" if scorer.history_skipped
            else ""), file=sys.stderr)
    x, skipped = scorer.inputs(paths, sidecar_dir=args.sidecars, max_pixels=args.max_pixels,
                               notes=notes, annotators=_annotators(args, batch_size))
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr)
    scores = scorer.run(x, batch_size, progress=progress)
    return x.paths, scores, skipped, lambda path, all_skipped: score_report.write_report(
        path, x.paths, scores, scorer.run(x, batch_size, heatmaps=True), pixels=list(x.images),
        card=scorer.card, skipped=all_skipped)


def _annotators(args, batch_size: int) -> list:
    """The --annotate annotators (`ipa_jax.annotate.backends`), or a one-line exit."""
    if not args.annotate:
        return []
    from ipa_jax.annotate import backends  # noqa: PLC0415

    try:
        return backends.from_flags(args, backends.parse_signals(args.annotate, "annotate"),
                                   batch_size)
    except (ValueError, backends.MissingExtra) as e:
        raise SystemExit(f"Cannot annotate: {e}") from None


def _score_video(scorer: scoring.Scorer, args) -> None:
    from ipa_jax import video  # noqa: PLC0415

    try:
        result = video.score_video(scorer, args.video, args.every, args.batch_size)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"Cannot score the video: {e}") from None
    stem = os.path.splitext(os.path.basename(args.video))[0]
    thumb, plot = video.write_outputs(result, args.video_out, stem)
    b = result.best
    print(f"{len(result.frames)} frames scored (every {args.every}); best: frame "
          f"{result.frames[b]} at {result.times[b]:.2f} s, log-score {result.scores[b]:.6f}\n"
          f"thumbnail: {thumb}\nplot: {plot}")


if __name__ == "__main__":
    main()
