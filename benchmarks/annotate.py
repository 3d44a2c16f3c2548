# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Images per second of each annotator at its real architecture and default input size (random
weights: no download), and the projected time for the paper's 569,151 training images.

    python benchmarks/annotate.py [--libraries=transformers,keras_hub]
        [--signals=depth,keypoints,background,captions] [--images=8] [--batch=4]
        [--height=1080 --width=1080] [--tflops=312 --utilisation=0.4]
        [--paligemma=pali_gemma_3b_mix_224|FOLDER]

Each model is built from its preset's architecture (transformers: Depth Anything V2 Small,
RT-DETR R50vd + ViTPose-B, MobileViT-small DeepLabV3, BLIP-base; keras_hub: Depth Anything V2
Small, DeepLabV3+ ResNet-50; PaliGemma only with its weights, --paligemma), saved to a temporary
folder and loaded through `ipa_jax.annotate.backends.load`, so the timing covers the whole
annotator (preprocessing, model, postprocessing) on --images photos of --height x --width
(Instagram's 1080 px). The accelerator projection divides the FLOPs of one image (PyTorch's
FlopCounterMode, or XLA's cost analysis for the JAX models) by --tflops x --utilisation
(defaults: an A100's 312 bf16 TFLOP/s at 40%); it is an estimate, not a measurement. Captions
with random weights always run to 20 tokens (a typical caption's length), and keypoints pose 2
people per photo (the best 2 of the random detector's boxes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports tensorflow or keras
from ipa_jax.annotate import backends  # noqa: E402

PAPER_TRAIN_IMAGES = 569_151


def _hf_models(root: str) -> dict:
    """signal -> (spec, options) of the transformers presets' architectures, random weights."""
    import transformers as t  # noqa: PLC0415

    def save(name, model, *processors):
        folder = os.path.join(root, name)
        for obj in (model, *processors):
            obj.save_pretrained(folder)
        return folder

    dinov2 = t.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12],
                            reshape_hidden_states=False)
    depth = save("depth", t.DepthAnythingForDepthEstimation(t.DepthAnythingConfig(
        backbone_config=dinov2, reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64, head_hidden_size=32)), t.DPTImageProcessorPil(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resize_method="lower_bound"))
    coco = {0: "person", **{i: f"class{i}" for i in range(1, 80)}}
    detector = save("detector", t.RTDetrForObjectDetection(t.RTDetrConfig(
        id2label=coco, label2id={v: k for k, v in coco.items()})),
        t.RTDetrImageProcessorPil(size={"height": 640, "width": 640}))
    pose = save("pose", t.VitPoseForPoseEstimation(t.VitPoseConfig(num_labels=17)),
                t.VitPoseImageProcessorPil())
    voc = {0: "background", 15: "person", **{i: f"class{i}" for i in range(1, 21) if i != 15}}
    segmenter = save("segmenter", t.MobileViTForSemanticSegmentation(t.MobileViTConfig(
        image_size=512, num_labels=21, id2label=voc, label2id={v: k for k, v in voc.items()})),
        t.MobileViTImageProcessorPil(size={"shortest_edge": 512},
                                     crop_size={"height": 512, "width": 512}))
    vocab = os.path.join(root, "vocab.txt")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    with open(vocab, "w") as f:
        f.write("\n".join(specials + [f"w{i}" for i in range(30524 - len(specials))]) + "\n")
    tokenizer = t.BertTokenizer(vocab=vocab, bos_token="[DEC]")
    captioner = save("captioner", t.BlipForConditionalGeneration(t.BlipConfig(
        text_config={"bos_token_id": 5, "sep_token_id": 3, "eos_token_id": 3,
                     "pad_token_id": 0})), t.BlipProcessor(
        image_processor=t.BlipImageProcessorPil(size={"height": 384, "width": 384}),
        tokenizer=tokenizer))
    return {"depth": (f"transformers:{depth}", {}),
            "keypoints": (f"transformers:{pose}", {"detector": detector, "person_threshold": 0,
                                                       "max_people": 2}),
            "background": (f"transformers:{segmenter}", {}),
            "captions": (f"transformers:{captioner}", {"max_new_tokens": 20})}


def _keras_hub_models(root: str, paligemma: str = "") -> dict:
    """signal -> (spec, options, FLOPs per image) of the Keras Hub presets' architectures
    (Depth Anything V2 Small, DeepLabV3+ ResNet-50 on PASCAL VOC), random weights; captions
    only from a PaliGemma preset given (`paligemma`: a name or a downloaded folder), since its
    257k-token vocabulary cannot be built without the weights, and it holds 3B parameters."""
    import jax  # noqa: PLC0415
    import keras_hub  # noqa: PLC0415

    m, layers = keras_hub.models, keras_hub.layers
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    encoder = m.DINOV2Backbone(
        patch_size=14, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536,
        image_shape=(518, 518, 3), position_embedding_shape=(518, 518))
    depth = m.DepthAnythingDepthEstimator(
        m.DepthAnythingBackbone(
            image_encoder=encoder, reassemble_factors=[4, 2, 1, 0.5],
            neck_hidden_dims=[48, 96, 192, 384], fusion_hidden_dim=64, head_hidden_dim=32,
            head_in_index=-1, feature_keys=["stage3", "stage6", "stage9", "stage12"]),
        depth_estimation_type="relative",
        preprocessor=m.DepthAnythingDepthEstimatorPreprocessor(layers.DepthAnythingImageConverter(
            image_size=(518, 518), scale=[1 / 255 / s for s in std],
            offset=[-a / s for a, s in zip(mean, std, strict=True)], interpolation="bicubic")))
    resnet = m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block")
    segmenter = m.DeepLabV3ImageSegmenter(
        m.DeepLabV3Backbone(image_encoder=resnet, low_level_feature_key="P2",
                            spatial_pyramid_pooling_key="P5", dilation_rates=[6, 12, 18],
                            upsampling_size=8, projection_filters=48),
        num_classes=21, preprocessor=m.DeepLabV3ImageSegmenterPreprocessor(
            layers.DeepLabV3ImageConverter(image_size=(512, 512), scale=1 / 255)))
    out = {}
    for signal, task, size in (("depth", depth, 518), ("background", segmenter, 512)):
        folder = os.path.join(root, f"keras_hub_{signal}")
        task.save_to_preset(folder)
        x = np.zeros((1, size, size, 3), np.float32)
        cost = jax.jit(lambda v, t=task: t(v)).lower(x).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out[signal] = (f"keras_hub:{folder}", {}, float(cost.get("flops", 0)) or None)
    if paligemma:
        out["captions"] = (f"keras_hub:{paligemma}", {"max_length": 32}, None)
    return out


def _torch_flops(annotator, image) -> float:
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with FlopCounterMode(display=False) as counter:
        annotator([image])
    return float(counter.get_total_flops())


def measure(library, signal, spec, options, photos, batch, args, flops=None) -> dict:
    annotator = backends.load(signal, spec, batch_size=batch, **options)
    annotator(photos[:batch])  # warm-up (jit compiles, lazy inits)
    start = time.perf_counter()
    for i in range(0, len(photos), batch):
        annotator(photos[i:i + batch])
    seconds = time.perf_counter() - start
    per_s = len(photos) / seconds
    single = time.perf_counter()
    annotator(photos[:1])
    single = time.perf_counter() - single
    if library == "transformers":
        flops = _torch_flops(annotator, photos[0])
    projected = (PAPER_TRAIN_IMAGES * flops / (args.tflops * 1e12 * args.utilisation) / 3600
                 if flops else None)
    return {"library": library, "signal": signal, "images_per_s": per_s,
            "single_ms": single * 1e3, "gflops": flops / 1e9 if flops else None,
            "cpu_hours": PAPER_TRAIN_IMAGES / per_s / 3600, "accelerator_hours": projected}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libraries", default="transformers")
    parser.add_argument("--signals", default=",".join(backends.SIGNALS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1080)
    parser.add_argument("--tflops", type=float, default=312.0)
    parser.add_argument("--utilisation", type=float, default=0.4)
    parser.add_argument("--paligemma", default="",
                        help="keras_hub captions: a PaliGemma preset name or folder (weights)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (args.height, args.width, 3), np.uint8)
              for _ in range(args.images)]
    signals = args.signals.split(",")
    print(f"{args.images} photos of {args.height}x{args.width}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores; projection: {PAPER_TRAIN_IMAGES:,} images at "
          f"{args.tflops:g} TFLOP/s x {args.utilisation:g}")
    print(f"{'library':<13}{'signal':<12}{'images/s':>10}{'1 image ms':>12}{'GFLOPs':>9}"
          f"{'CPU h':>9}{'accel. h':>10}")
    with tempfile.TemporaryDirectory() as root:
        for library in args.libraries.split(","):
            models = (_hf_models(root) if library == "transformers"
                      else _keras_hub_models(root, args.paligemma))
            for signal in signals:
                if signal not in models:  # keras_hub: no pose model; PaliGemma: --paligemma
                    print(f"{library:<13}{signal:<12}{'not run':>10}")
                    continue
                row = measure(library, signal, *models[signal][:2], photos, args.batch, args,
                              *models[signal][2:])
                gflops = f"{row['gflops']:9.1f}" if row["gflops"] else f"{'-':>9}"
                accel = (f"{row['accelerator_hours']:10.2f}" if row["accelerator_hours"]
                         else f"{'-':>10}")
                print(f"{library:<13}{signal:<12}{row['images_per_s']:10.2f}"
                      f"{row['single_ms']:12.0f}{gflops}{row['cpu_hours']:9.0f}{accel}",
                      flush=True)


if __name__ == "__main__":
    main()
