# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Annotators on PyTorch and Hugging Face `transformers` (`pip install -e ".[annotate-torch]"`).

`backends.load(signal, "transformers:<Hub name or local folder>", batch_size=, **options)` calls
the builder named after the signal; `weights` goes to `from_pretrained` as given, so a local
folder (a `save_pretrained` output, model and processor together) never touches the network.
Documented presets (the builders' defaults):

  depth       depth-anything/Depth-Anything-V2-Small-hf (AutoModelForDepthEstimation; DPT too);
  keypoints   usyd-community/vitpose-base-simple (VitPoseForPoseEstimation), on the people that
              `detector=` (required; e.g. PekingU/rtdetr_r50vd_coco_o365, any
              AutoModelForObjectDetection whose labels include "person") finds;
  background  apple/deeplabv3-mobilevit-small (AutoModelForSemanticSegmentation; DeepLabV3 on
              PASCAL VOC, as in the paper);
  captions    Salesforce/blip-image-captioning-base (AutoModelForImageTextToText, greedy);
  text        sentence-transformers/all-MiniLM-L6-v2 (`text_embedder`, caption embeddings).

Choices:
  * Every image is preprocessed on its own and images whose tensors come out the same shape run
    as one batch. Processors that keep the aspect ratio (Depth Anything) would otherwise fail to
    stack a batch of photos of different sizes, and padding would make an image's output depend
    on its batch mates; this way an output does not depend on the batch it came in.
  * Center cropping is switched off for the dense signals and the detector (MobileViT's
    processor crops by default): a crop would drop the image's borders from the map, and map
    the kept middle onto the whole image.
  * depth: Depth Anything (relative) and DPT predict relative inverse depth (disparity, larger =
    nearer); the contract wants larger = farther, so their map is negated (`output="disparity"`,
    the default for those models; `output="depth"` for a model that predicts depth, the default
    for the rest, e.g. metric Depth Anything, GLPN, ZoeDepth). Maps stay at the model's
    resolution (the sidecar writer resizes them to the image).
  * keypoints: the transformers ViTPose recipe: detector -> `post_process_object_detection`
    (scores above `person_threshold`) -> the "person" boxes, clipped to the image, as COCO
    (x, y, w, h) -> the pose processor crops them -> heatmaps -> `post_process_pose_estimation`.
    Boxes under a pixel wide or high are dropped (no crop to pose). ViTPose+ (mixture of
    experts) runs its COCO expert (dataset_index 0).
  * background: the label map is the argmax of the logits upsampled (bilinear) to the model's
    input size, which keeps the image's aspect ratio without holding [labels, H, W] logits of a
    full-size photo; background is every pixel whose label is in `background_labels` (default:
    the label "background" where the model has one, as PASCAL VOC does, else every label but
    "person").
  * `info` is what the runner records and compares between runs, so it holds only
    JSON-stable values (no device, no batch size: neither changes the model's outputs beyond
    rounding).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

from ipa_jax.annotate.backends import Annotator

DEPTH_PRESET = "depth-anything/Depth-Anything-V2-Small-hf"
DETECTOR_PRESET = "PekingU/rtdetr_r50vd_coco_o365"  # documented; `detector=` must be given
POSE_PRESET = "usyd-community/vitpose-base-simple"
SEGMENTATION_PRESET = "apple/deeplabv3-mobilevit-small"
CAPTION_PRESET = "Salesforce/blip-image-captioning-base"
TEXT_PRESET = "sentence-transformers/all-MiniLM-L6-v2"

COCO_KEYPOINTS = 17
DISPARITY_MODELS = ("depth_anything", "dpt")  # relative inverse depth, larger = nearer
DEPTH_OUTPUTS = ("disparity", "depth")


# ----------------------------------------------------------------------------- shared helpers


def _device(device: str | None) -> torch.device:
    return torch.device(device or "cpu")


def _weights_id(weights: str) -> str:
    """The recorded name of `weights`: a local folder's absolute path, else the Hub name."""
    return os.path.abspath(weights) if os.path.isdir(weights) else weights


def _load_model(model_class, weights: str, device: torch.device):
    return model_class.from_pretrained(weights).to(device).eval()


def _info(model, weights: str, **settings) -> dict[str, Any]:
    return {"library": "transformers", "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "architecture": type(model).__name__,
            "weights": _weights_id(weights), **settings}


def _labels(config) -> dict[int, str]:
    return {int(i): str(name) for i, name in config.id2label.items()}


def _label_ids(labels: dict[int, str], name: str) -> list[int]:
    return sorted(i for i, label in labels.items() if label.lower() == name)


def _no_crop(processor) -> dict[str, Any]:
    """Processor options that keep the whole image (see the module docstring)."""
    return {"do_center_crop": False} if getattr(processor, "do_center_crop", False) else {}


def _groups(processor, images: Sequence[np.ndarray], batch_size: int, device: torch.device,
            **options) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, model inputs) for batches of at most `batch_size` images whose preprocessed
    tensors have the same shapes; each image is preprocessed alone (see the docstring)."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for i, image in enumerate(images):
        inputs = processor(images=[np.asarray(image)], return_tensors="pt", **options)
        tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
        key = tuple((k, tuple(v.shape)) for k, v in sorted(tensors.items()))
        groups.setdefault(key, []).append((i, tensors))
    for members in groups.values():
        for start in range(0, len(members), max(batch_size, 1)):
            chunk = members[start:start + max(batch_size, 1)]
            yield [i for i, _ in chunk], {k: torch.cat([t[k] for _, t in chunk]).to(device)
                                          for k in chunk[0][1]}


def _annotator(signal: str, info: dict, predict: Callable, batch_size: int) -> Annotator:
    return Annotator(signal=signal, info=info, predict=torch.inference_mode()(predict),
                     batch_size=batch_size)


# ---------------------------------------------------------------------------------- depth


def native_depth_output(config) -> str:
    """"disparity" for models that predict relative inverse depth, else "depth"."""
    relative = getattr(config, "depth_estimation_type", "relative") == "relative"
    return "disparity" if config.model_type in DISPARITY_MODELS and relative else "depth"


def depth(weights: str = DEPTH_PRESET, batch_size: int = 8, *, output: str | None = None,
          device: str | None = None) -> Annotator:
    """Depth maps, float32 [h, w] at the model's resolution, larger = farther. `output`: what
    the model predicts, "disparity" (negated here) or "depth" (kept); default by model type."""
    dev = _device(device)
    processor = transformers.AutoImageProcessor.from_pretrained(weights)
    model = _load_model(transformers.AutoModelForDepthEstimation, weights, dev)
    output = output or native_depth_output(model.config)
    if output not in DEPTH_OUTPUTS:
        raise ValueError(f"depth output={output!r}: one of {DEPTH_OUTPUTS}")
    sign = -1.0 if output == "disparity" else 1.0

    def predict(images):
        out: list = [None] * len(images)
        for idx, inputs in _groups(processor, images, batch_size, dev, **_no_crop(processor)):
            maps = model(**inputs).predicted_depth
            for i, m in zip(idx, maps, strict=True):
                out[i] = (sign * m.reshape(m.shape[-2:])).float().cpu().numpy()
        return out

    return _annotator("depth", _info(model, weights, output=output), predict, batch_size)


# ------------------------------------------------------------------------------ keypoints


def _person_boxes(result: dict, person_ids: list[int], hw,
                  max_people: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO (x, y, w, h) boxes [k, 4] and scores [k] of the (at most `max_people` best scored)
    people in one detection result, clipped to the image; boxes under a pixel wide or high are
    dropped."""
    keep = np.isin(result["labels"].cpu().numpy(), person_ids)
    xyxy = result["boxes"].float().cpu().numpy()[keep]
    scores = result["scores"].float().cpu().numpy()[keep]
    h, w = hw
    xyxy = np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
    boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    big = (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)
    boxes, scores = boxes[big], scores[big]
    best = np.argsort(-scores, kind="stable")[:max_people]
    return boxes[best], scores[best]


def _pose_heatmaps(model, pixel_values: torch.Tensor, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Heatmaps of all person crops, in chunks; ViTPose+ runs its COCO expert."""
    moe = getattr(model.config.backbone_config, "num_experts", 1) > 1
    maps = []
    for chunk in pixel_values.split(max(batch_size, 1)):
        chunk = chunk.to(device)
        extra = {"dataset_index": torch.zeros(len(chunk), dtype=torch.long,
                                              device=device)} if moe else {}
        maps.append(model(pixel_values=chunk, **extra).heatmaps.float().cpu())
    return torch.cat(maps)


def keypoints(weights: str = POSE_PRESET, batch_size: int = 8, *, detector: str | None = None,
              person_threshold: float = 0.5, max_people: int = 20, pose_batch_size: int = 32,
              device: str | None = None) -> Annotator:
    """COCO-17 keypoints of the people `detector` finds above `person_threshold` (the
    `max_people` best scored): per image a list of {"keypoints": float32 [17, 3] (x, y, score)
    in image pixels, "score": detection}, best scored first."""
    if not detector:
        raise ValueError(f"keypoints needs a person detector: detector=<Hub name or folder>, "
                         f"e.g. {DETECTOR_PRESET!r}")
    dev = _device(device)
    det_processor = transformers.AutoImageProcessor.from_pretrained(detector)
    det_model = _load_model(transformers.AutoModelForObjectDetection, detector, dev)
    person_ids = _label_ids(_labels(det_model.config), "person")
    if not person_ids:
        raise ValueError(f"detector {detector!r} has no 'person' label (its labels: "
                         f"{sorted(set(_labels(det_model.config).values()))[:20]} ...)")
    pose_processor = transformers.AutoImageProcessor.from_pretrained(weights)
    pose_model = _load_model(transformers.VitPoseForPoseEstimation, weights, dev)
    if pose_model.config.num_labels != COCO_KEYPOINTS:
        raise ValueError(f"pose model {weights!r} predicts {pose_model.config.num_labels} "
                         f"keypoints; the annotations are COCO-{COCO_KEYPOINTS}")

    def detect(images) -> list[tuple[np.ndarray, np.ndarray]]:
        found: list = [None] * len(images)
        for idx, inputs in _groups(det_processor, images, batch_size, dev,
                                   **_no_crop(det_processor)):
            sizes = [tuple(images[i].shape[:2]) for i in idx]
            results = det_processor.post_process_object_detection(
                det_model(**inputs), threshold=person_threshold, target_sizes=sizes)
            for i, result, hw in zip(idx, results, sizes, strict=True):
                found[i] = _person_boxes(result, person_ids, hw, max_people)
        return found

    def predict(images):
        found = detect(images)
        out: list = [[] for _ in images]
        with_people = [i for i, (boxes, _) in enumerate(found) if len(boxes)]
        if not with_people:
            return out
        boxes = [found[i][0] for i in with_people]
        crops = pose_processor(images=[np.asarray(images[i]) for i in with_people], boxes=boxes,
                               return_tensors="pt")["pixel_values"]
        heatmaps = _pose_heatmaps(pose_model, crops, pose_batch_size, dev)
        poses = pose_processor.post_process_pose_estimation(
            VitPoseEstimatorOutput(heatmaps=heatmaps), boxes=boxes)
        for i, people in zip(with_people, poses, strict=True):
            out[i] = [{"keypoints": np.concatenate(
                          [p["keypoints"].numpy(), p["scores"].numpy()[:, None]], axis=1
                      ).astype(np.float32), "score": float(score)}
                      for p, score in zip(people, found[i][1], strict=True)]
        return out

    detector_info = {"architecture": type(det_model).__name__, "weights": _weights_id(detector)}
    info = _info(pose_model, weights, detector=detector_info,
                 person_threshold=float(person_threshold), max_people=int(max_people))
    return _annotator("keypoints", info, predict, batch_size)


# ----------------------------------------------------------------------------- background


def background_label_ids(labels: dict[int, str], names: Sequence[str | int] | None) -> list[int]:
    """The label ids counted as background: `names` (label names, any case, or ids), else the
    label "background" where there is one, else every label but "person"."""
    if names is not None:
        by_name = {label.lower(): i for i, label in labels.items()}
        unknown = [n for n in names if n not in labels and str(n).lower() not in by_name]
        if unknown or not names:
            raise ValueError(f"background_labels {list(names)!r}: not among the model's labels "
                             f"{sorted(labels.values())}")
        return sorted({n if isinstance(n, int) and n in labels else by_name[str(n).lower()]
                       for n in names})
    if found := _label_ids(labels, "background"):
        return found
    person = _label_ids(labels, "person")
    if not person:
        raise ValueError("the segmentation model has neither a 'background' nor a 'person' "
                         "label; name the background labels with background_labels=[...]")
    return sorted(set(labels) - set(person))


def background(weights: str = SEGMENTATION_PRESET, batch_size: int = 8, *,
               background_labels: Sequence[str | int] | None = None,
               device: str | None = None) -> Annotator:
    """Background masks, bool [h, w] at the model's input size, True = background."""
    dev = _device(device)
    processor = transformers.AutoImageProcessor.from_pretrained(weights)
    model = _load_model(transformers.AutoModelForSemanticSegmentation, weights, dev)
    labels = _labels(model.config)
    ids = background_label_ids(labels, background_labels)
    id_tensor = torch.tensor(ids, device=dev)

    def predict(images):
        out: list = [None] * len(images)
        for idx, inputs in _groups(processor, images, batch_size, dev, **_no_crop(processor)):
            logits = model(**inputs).logits
            logits = torch.nn.functional.interpolate(
                logits.float(), size=inputs["pixel_values"].shape[-2:], mode="bilinear",
                align_corners=False)
            masks = torch.isin(logits.argmax(dim=1), id_tensor).cpu().numpy()
            for i, mask in zip(idx, masks, strict=True):
                out[i] = mask
        return out

    info = _info(model, weights, background_labels=[labels[i] for i in ids])
    return _annotator("background", info, predict, batch_size)


# ------------------------------------------------------------------------------- captions


def captions(weights: str = CAPTION_PRESET, batch_size: int = 8, *, max_new_tokens: int = 30,
             device: str | None = None) -> Annotator:
    """Greedy captions (str) of an image-to-text model (BLIP and its kind, image-only input)."""
    dev = _device(device)
    processor = transformers.AutoProcessor.from_pretrained(weights)
    model = _load_model(transformers.AutoModelForImageTextToText, weights, dev)

    def predict(images):
        out: list = [None] * len(images)
        for idx, inputs in _groups(processor, images, batch_size, dev):
            tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    num_beams=1)
            texts = processor.batch_decode(tokens, skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text.strip()
        return out

    info = _info(model, weights, max_new_tokens=int(max_new_tokens), decoding="greedy")
    return _annotator("captions", info, predict, batch_size)


# ---------------------------------------------------------------------------- text embedder


@dataclasses.dataclass
class TextEmbedder:
    """texts -> float32 [N, dim] unit rows (mean of the last hidden state over the tokens)."""
    info: dict[str, Any]
    embed: Callable[[list[str]], np.ndarray]
    dim: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(list(texts))


def _max_length(tokenizer, config) -> int | None:
    limits = [n for n in (tokenizer.model_max_length,
                          getattr(config, "max_position_embeddings", None))
              if isinstance(n, int) and n < 1_000_000]
    return min(limits) if limits else None


def text_embedder(weights: str = TEXT_PRESET, batch_size: int = 32, *,
                  device: str | None = None) -> TextEmbedder:
    """A sentence encoder (AutoModel + AutoTokenizer): mean-pooled last hidden state over the
    attention mask, L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 is used."""
    dev = _device(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(weights)
    model = _load_model(transformers.AutoModel, weights, dev)
    max_length = _max_length(tokenizer, model.config)
    dim = int(model.config.hidden_size)

    @torch.inference_mode()
    def embed(texts: list[str]) -> np.ndarray:
        rows = [np.zeros((0, dim), np.float32)]
        for start in range(0, len(texts), max(batch_size, 1)):
            batch = tokenizer(texts[start:start + max(batch_size, 1)], padding=True,
                              truncation=max_length is not None, max_length=max_length,
                              return_tensors="pt").to(dev)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32)

    info = _info(model, weights, pooling="mean", normalize=True)
    return TextEmbedder(info=info, embed=embed, dim=dim)
