# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Weight import: timm / torchvision checkpoints -> an orbax checkpoint of the Flax variables.

  python -m ipa_jax.convert --model=swin_base_patch4_window7_224 \
      --checkpoint=swin_base.safetensors --output=/ckpt/swin_base
  python -m ipa_jax.convert --model=resnet50 --checkpoint=i2pa.pth --output=/ckpt/i2pa \
      --preset=i2pa          # the released I2PA model (SPEC 1): squash, pixels in [0, 1]

ipa_jax's modules carry the reference names, so conversion is a table, not code: a torch key
`layers.0.blocks.1.attn.qkv.weight` is the Flax path `params/layers_0/blocks_1/attn/qkv/kernel`
(a numeric part joins the name before it with `_`), with per-leaf transforms: conv weights
OIHW -> HWIO, linear weights transposed, 1-d weights -> `scale`, running statistics ->
`batch_stats`. Buffers the model recomputes (`num_batches_tracked`, the relative position
index, the shifted-window mask) are dropped. A relative position table trained at another
window size is resized like timm. Anything that cannot be placed is reported; a partial
model is written only with `--allow_partial`.

`.pth` files are read with `torch.load(weights_only=True)` (torch needed, never unpickling
arbitrary objects); `.safetensors` need no torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

import numpy as np

# Torch keys of buffers that ipa_jax recomputes from the architecture.
DROPPED = re.compile(r"(num_batches_tracked|relative_position_index|attn_mask)$")
RELATIVE_TABLE = "relative_position_bias_table"
METADATA = "ipa_jax_model.json"
VARIABLES = "variables"


# ---------------------------------------------------------------------------- reading
def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A checkpoint's tensors as float32/int numpy arrays, unwrapped and without `module.`.

    Raises FileNotFoundError for a missing file and ValueError, one line naming the fix, for
    one that cannot be used: a truncated or garbage file, a `.pth` that holds no state dict
    (a list, a whole pickled model) or objects that `torch.load(weights_only=True)` refuses.
    """
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open  # noqa: PLC0415 - this format only

        try:
            with safe_open(path, framework="numpy") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except SafetensorError as e:
            raise ValueError(
                f"{path} is not a readable .safetensors file ({_line(e)}): it is truncated or "
                "not safetensors; download or export it again.") from None
    elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        try:
            import torch  # noqa: PLC0415 - optional: only .pth conversion needs it
        except ImportError as e:
            raise ImportError(
                f"Reading {path} needs torch (`pip install torch`); or convert it to "
                ".safetensors elsewhere and pass that.") from e
        state = _torch_load(torch, path)
        for wrapper in ("model", "state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names "
                "to tensors); save `model.state_dict()` with torch.save and pass that file.")
        state = {str(k): v.float().numpy() if v.is_floating_point() else v.numpy()
                 for k, v in state.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise ValueError(
                f"{path} holds a mapping without tensors at its top level (nor under "
                "'model', 'state_dict' or 'model_state_dict'); save `model.state_dict()` "
                "with torch.save and pass that file.")
    else:
        raise ValueError(f"{path}: expected a .safetensors or .pth checkpoint.")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _torch_load(torch, path: str):
    """`torch.load(path, weights_only=True)`; ValueError, one line, for a file it refuses."""
    import pickle  # noqa: PLC0415

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"{path} is not a readable torch checkpoint ({_line(e)}): it is "
                             "truncated or not a torch.save file; download it again.") from None
        raise ValueError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to "
            "unpickle (a whole model or training state, not only tensors); ipa_jax never runs "
            "a checkpoint's code. If you trust the file, re-save its weights alone elsewhere: "
            "torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pth') "
            "(for a pickled model), and pass that.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # zip reader, empty file, ...
        raise ValueError(f"{path} is not a readable torch checkpoint ({_line(e)}): it is "
                         "truncated or not a torch.save file; download it again.") from None


def upgrade_legacy_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original Swin checkpoints (Microsoft's, timm < 0.9) -> timm's current layout.

    They merge patches at the END of each stage and name the classifier `head`; timm (and
    ipa_jax) merge at the start of the next stage and name it `head.fc`.
    """
    if "layers.0.downsample.reduction.weight" not in state:
        return dict(state)
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        out[re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)] = value
    return out


# ---------------------------------------------------------------------------- the table
def torch_to_flax(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """A torch key and tensor -> the Flax path (`collection/module/.../leaf`) and array.

    Returns None for buffers that are recomputed rather than loaded.
    """
    if DROPPED.search(key):
        return None
    *modules, leaf = key.split(".")
    names: list[str] = []
    for part in modules:
        if part.isdigit() and names:
            names[-1] = f"{names[-1]}_{part}"
        else:
            names.append(part)
    collection = "params"
    if leaf in ("running_mean", "running_var"):
        collection, leaf = "batch_stats", leaf[len("running_"):]
    elif leaf == "weight" and value.ndim == 4:  # conv OIHW -> HWIO
        leaf, value = "kernel", value.transpose(2, 3, 1, 0)
    elif leaf == "weight" and value.ndim == 2:  # linear [out, in] -> [in, out]
        leaf, value = "kernel", value.T
    elif leaf == "weight" and value.ndim == 1:  # BatchNorm / LayerNorm
        leaf = "scale"
    return "/".join([collection, *names, leaf]), np.ascontiguousarray(value)


def torch_shape(path: str, shape: tuple) -> tuple:
    """The torch shape of a Flax leaf of `shape` (the inverse of `torch_to_flax`'s layout)."""
    if path.endswith("/kernel") and len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if path.endswith("/kernel") and len(shape) == 2:  # [in, out] -> [out, in]
        return (shape[1], shape[0])
    return tuple(shape)


def resize_relative_position_table(table: np.ndarray, window: int) -> np.ndarray:
    """A `[(2w-1)^2, heads]` bias table resized to window `window`, as timm does on loading.

    timm's `resize_rel_pos_bias_table`: the source offsets are spread on a geometric
    progression that covers the target range, then interpolated linearly onto the integer
    target offsets (scipy's RegularGridInterpolator is the same linear interpolation).
    """
    from scipy.interpolate import RegularGridInterpolator  # noqa: PLC0415

    src = int(round(np.sqrt(table.shape[0])))
    dst = 2 * window - 1
    if src * src != table.shape[0]:
        raise ValueError(f"Not a square relative position table: {table.shape}")
    if src == dst:
        return table

    def source_offsets(src: int, dst: int) -> np.ndarray:
        left, right = 1.01, 1.5
        while right - left > 1e-6:  # the ratio whose progression reaches dst // 2
            q = (left + right) / 2.0
            if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
                right = q
            else:
                left = q
        dis, cur = [], 1.0
        for i in range(src // 2):
            dis.append(cur)
            cur += q ** (i + 1)
        return np.array([-d for d in reversed(dis)] + [0.0] + dis)

    offsets = source_offsets(src, dst)
    # timm builds the offsets as float32 tensors; match it to the last bit.
    offsets = offsets.astype(np.float32).astype(np.float64)
    target = np.arange(-(dst // 2), dst // 2 + 0.1, 1.0)
    ty, tx = np.meshgrid(target, target, indexing="ij")
    points = np.stack([ty.ravel(), tx.ravel()], axis=-1)
    heads = [RegularGridInterpolator((offsets, offsets),
                                     table[:, h].reshape(src, src).astype(np.float64))(points)
             for h in range(table.shape[1])]
    return np.stack(heads, axis=-1).astype(table.dtype)


# ---------------------------------------------------------------------------- conversion
@dataclasses.dataclass
class Conversion:
    """What a state dict gave a model: the variables placed and everything that was not."""

    variables: dict  # nested {"params": ..., "batch_stats": ...}, numpy, placed leaves only
    placed: list[str]  # Flax paths filled from the checkpoint
    resized: list[str]  # of those, relative position tables resized to the model's window
    unplaced: list[str]  # torch keys with no place in the model
    mismatched: list[str]  # "key: checkpoint shape vs model shape"
    missing: list[str]  # Flax paths the checkpoint did not fill
    notice: str = ""  # what the writer decided for the user (the preprocessing preset)

    @property
    def ok(self) -> bool:
        return not (self.unplaced or self.mismatched or self.missing)

    def report(self) -> str:
        lines = [f"{len(self.placed)} arrays placed ({len(self.resized)} resized)."]
        for title, items in (("Unplaced checkpoint keys", self.unplaced),
                             ("Shape mismatches", self.mismatched),
                             ("Model variables missing from the checkpoint", self.missing)):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(items))
        return "\n".join(lines)


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """`{"a": {"b": x}}` -> `{"a/b": x}`."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        out.update(flatten(v, path) if isinstance(v, Mapping) else {path: v})
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """`{"a/b/c": x}` -> `{"a": {"b": {"c": x}}}`."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def convert_state_dict(state: Mapping[str, np.ndarray], abstract_variables: Mapping
                       ) -> Conversion:
    """Places a timm / torchvision state dict into a model's variables.

    Args:
      state: torch key -> array (from `read_state_dict`).
      abstract_variables: the model's variables or their shapes (`jax.eval_shape` of init).
    Returns:
      A `Conversion`; `.ok` only when every tensor and every model variable was matched.
    """
    targets = {k: tuple(v.shape) for k, v in flatten(abstract_variables).items()}
    placed, resized, unplaced, mismatched = {}, [], [], []
    for key, value in upgrade_legacy_keys(state).items():
        mapped = torch_to_flax(key, np.asarray(value))
        if mapped is None:
            continue
        path, array = mapped
        if path not in targets:
            unplaced.append(key)
            continue
        if array.shape != targets[path] and path.endswith(RELATIVE_TABLE) \
                and array.shape[1:] == targets[path][1:]:
            window = (int(round(np.sqrt(targets[path][0]))) + 1) // 2
            array = resize_relative_position_table(array, window)
            resized.append(path)
        if array.shape != targets[path]:
            mismatched.append(f"{key}: checkpoint {tuple(np.shape(value))} vs model "
                              f"{torch_shape(path, targets[path])} (torch layout)")
            continue
        placed[path] = array
    missing = sorted(set(targets) - set(placed))
    return Conversion(unflatten(placed), sorted(placed), resized, unplaced, mismatched,
                      missing)


def infer_num_classes(state: Mapping[str, np.ndarray]) -> int:
    """The classifier's width (`fc` or `head.fc`), 0 for a headless checkpoint."""
    for key in ("fc.weight", "head.fc.weight", "head.weight"):
        if key in state:
            return int(state[key].shape[0])
    return 0


# ---------------------------------------------------------------------------- writing
def write(output_dir: str, variables: Mapping, metadata: Mapping) -> None:
    """An orbax checkpoint `output_dir/variables` and `output_dir/ipa_jax_model.json`."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(output_dir, VARIABLES), dict(variables), force=True)
    with open(os.path.join(output_dir, METADATA), "w") as f:
        json.dump(dict(metadata), f, indent=2)


def convert_checkpoint(checkpoint: str, model_name: str, output_dir: str, *,
                       num_classes: int = -1, input_spec: Mapping | None = None,
                       allow_partial: bool = False, preset: str = "",
                       given: Mapping | None = None) -> Conversion:
    """Reads, converts and writes one checkpoint; raises on a partial model unless allowed.
    input_spec: the served input (size, resize, normalize, ...); preset and given: see
    `preprocessing` (given: the input settings the user chose explicitly, which win)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from ipa_jax import models  # noqa: PLC0415

    state = read_state_dict(checkpoint)
    if num_classes < 0:
        num_classes = infer_num_classes(upgrade_legacy_keys(state))
    model = models.get_model(model_name, num_classes=num_classes)
    size = models.input_size(model_name)
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    result = convert_state_dict(state, abstract)
    if not result.ok and not allow_partial:
        raise ValueError(f"{checkpoint} does not fill {model_name} (num_classes="
                         f"{num_classes}); nothing written. Pass --allow_partial to write the "
                         f"arrays that fit.\n{result.report()}")
    chosen, result.notice = preprocessing(model_name, num_classes, preset, dict(given or {}))
    i2pa = preset == "i2pa" or bool(result.notice)  # the released I2PA model: pairwise BCE
    spec = {"size": size, "resize": "crop", "resize_short_side": round(size / 0.875),
            "normalize": "imagenet", **(input_spec or {}), **chosen}
    write(output_dir, result.variables, {
        "model": model_name, "num_classes": num_classes, "source": os.path.abspath(checkpoint),
        "input": spec, **({"objective": "i2pa_bce"} if i2pa else {}),  # how it was trained
        "complete": result.ok, "placed": len(result.placed),
        "resized": result.resized})
    from ipa_jax import model_card  # noqa: PLC0415

    model_card.write(os.path.abspath(output_dir), model_card.build(
        model=model_name, objective="i2pa_bce" if i2pa else "", preprocessing=spec,
        trained_on={"source": os.path.abspath(checkpoint), "how": "converted from a timm / "
                    "torchvision checkpoint; its training data is the checkpoint's"}))
    return result


# Preprocessing a model family was trained with. i2pa: the released I2PA model (Ding et al.,
# SPEC 1), a torchvision ResNet-50 with one output, fed whole images squashed to 224 x 224 with
# pixels in [0, 1], not ImageNet's crop and normalisation.
PRESETS = {"i2pa": {"resize": "squash", "normalize": "unit"}}


def preprocessing(model_name: str, num_classes: int, preset: str, given: Mapping) -> tuple:
    """(input spec overrides, notice or ""): the preset's settings under the flags given
    explicitly; a one-output ResNet without a preset is the released I2PA layout, so it gets
    the i2pa preset with a printed notice unless its preprocessing was given."""
    notice = ""
    if not preset and model_name.startswith("resnet") and num_classes == 1 and not given:
        preset = "i2pa"
        notice = ("A one-output ResNet is the layout of the released I2PA model: converting "
                  "with --preset=i2pa (resize=squash, normalize=unit). Pass --resize and "
                  "--normalize to choose otherwise.")
    return {**PRESETS.get(preset, {}), **given}, notice


def main(argv) -> None:
    del argv
    from absl import flags, logging  # noqa: PLC0415

    f = flags.FLAGS
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines are not the converter's output
    given = {name: f[name].value for name in ("resize", "normalize") if f[name].present}
    spec = {"resize": f.resize, "normalize": f.normalize}
    if f.input_size > 0:
        spec["size"] = f.input_size
    if f.resize_short_side > 0:
        spec["resize_short_side"] = f.resize_short_side
    try:
        result = convert_checkpoint(f.checkpoint, f.model, f.output, num_classes=f.num_classes,
                                    input_spec=spec, allow_partial=f.allow_partial,
                                    preset=f.preset, given=given)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise SystemExit(f"Conversion failed: {e}") from None
    if result.notice:
        print(result.notice)
    print(result.report())
    print(f"Wrote {os.path.abspath(f.output)}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("checkpoint", None, "timm / torchvision .safetensors or .pth file.")
    flags.DEFINE_string("model", None, "ipa_jax model name (ipa_jax.models.VARIANTS).")
    flags.DEFINE_string("output", None, "Output directory (orbax variables + metadata).")
    flags.DEFINE_integer("num_classes", -1, "Classifier width; -1: from the checkpoint.")
    flags.DEFINE_integer("input_size", 0, "Input size the model is served at; 0: its default.")
    flags.DEFINE_enum("resize", "crop", ["crop", "squash"],
                      "crop: short side then centre crop; squash: resize both sides "
                      "(the released I2PA model).")
    flags.DEFINE_integer("resize_short_side", 0, "Short side before the crop; 0: size/0.875.")
    flags.DEFINE_enum("normalize", "imagenet", ["imagenet", "unit"],
                      "imagenet: mean/std; unit: pixels in [0, 1] (the released I2PA model).")
    flags.DEFINE_bool("allow_partial", False, "Write even if some arrays could not be placed.")
    flags.DEFINE_enum("preset", "", ["", *PRESETS],
                      "The preprocessing a model family was trained with; i2pa: squash, unit "
                      "(a one-output ResNet gets it with a notice unless --resize/--normalize "
                      "are given).")
    flags.mark_flags_as_required(["checkpoint", "model", "output"])
    app.run(main)
