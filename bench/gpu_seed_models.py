"""Full-size seed models in the ORIGINAL checkpoint format, loaded through vlmq's loader on a GPU.

    python bench/gpu_seed_models.py                       # InternVL2-1B and InternVL2_5-4B on cuda
    python bench/gpu_seed_models.py --models internvl2-8b # any seed model
    python bench/gpu_seed_models.py --tiny --device cpu   # the same path on tiny checkpoints (smoke)

Random weights with the real architectures' shapes (no download): load time, peak GPU memory and
the latency of one caption and one grounding request. Baseline, measured in the same run: the same
weights saved as a native "-hf" checkpoint and loaded by transformers directly; the ratios show what
vlmq's own original-format mapping costs (load) and that the mapped model runs as fast (latency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from workers.inference.fixtures.original import SEED_ARCHITECTURES, build_original_checkpoint  # noqa: E402
from workers.inference.runtime.loading import LoadOptions  # noqa: E402
from workers.inference.runtime.model import InternVLRuntime  # noqa: E402
from workers.inference.runtime.requests import GenerationRequest  # noqa: E402


def _image() -> Image.Image:
    image = Image.new("RGB", (1280, 720), (235, 235, 225))
    ImageDraw.Draw(image).rectangle((300, 200, 700, 500), fill=(200, 30, 30))
    return image


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _requests(max_new_tokens: int) -> dict[str, GenerationRequest]:
    return {
        "caption": GenerationRequest("caption", None, [_image()], max_tiles=6, max_new_tokens=max_new_tokens),
        "grounding": GenerationRequest("grounding", "the red box", [_image()], max_tiles=6, max_new_tokens=max_new_tokens),
    }


def _load(path: Path, device: str) -> tuple[InternVLRuntime, float, int]:
    """The runtime, its load time and the GPU memory it added at its peak (load and first request)."""
    before = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    runtime = InternVLRuntime.load(path, LoadOptions(device=device))
    _sync(device)
    load_s = time.perf_counter() - started
    runtime.run([_requests(8)["caption"]])  # warm-up: kernels, allocator
    peak = torch.cuda.max_memory_allocated() - before if device.startswith("cuda") else 0
    return runtime, load_s, peak


def _latency(runtime: InternVLRuntime, request: GenerationRequest, device: str) -> tuple[float, int, int]:
    _sync(device)
    started = time.perf_counter()
    (result,) = runtime.run([request])
    _sync(device)
    return time.perf_counter() - started, result.output_tokens, result.tiles


def _native_copy(runtime: InternVLRuntime, original_dir: Path, target: Path, dtype: torch.dtype) -> Path:
    """The same weights as a native "-hf" checkpoint, stored in the original's dtype: the baseline
    transformers loads by itself."""
    runtime.model.to(dtype).save_pretrained(target)
    for file in original_dir.glob("tokenizer*"):
        shutil.copy(file, target / file.name)
    config = json.loads((target / "config.json").read_text())
    config["template"] = runtime.checkpoint.template.name
    (target / "config.json").write_text(json.dumps(config))
    return target


def bench(model_id: str, workdir: Path, *, device: str, tiny: bool, max_new_tokens: int, rounds: int = 3) -> None:
    original_dir = workdir / f"{model_id}-original"
    started = time.perf_counter()
    build_original_checkpoint(original_dir, model_id, full_size=not tiny, device=device)
    build_s = time.perf_counter() - started
    stored_dtype = torch.float32 if tiny else torch.bfloat16
    mapped, mapped_load_s, mapped_peak = _load(original_dir, device)
    _native_copy(mapped, original_dir, workdir / f"{model_id}-native", stored_dtype)
    del mapped  # the copy was cast for saving: load the original again for the latency runs
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    mapped, mapped_load_s, mapped_peak = _load(original_dir, device)
    native, native_load_s, native_peak = _load(workdir / f"{model_id}-native", device)
    weights = sum(file.stat().st_size for file in original_dir.glob("*.safetensors"))
    print(f"\n{model_id} ({'tiny' if tiny else 'full size'}, {device}; weights {weights / 2**30:.2f} GiB, built in {build_s:.1f}s)")
    print(f"  load      vlmq original-format {mapped_load_s:.2f}s | native baseline {native_load_s:.2f}s"
          f" | ratio {mapped_load_s / native_load_s:.2f}")
    if mapped_peak:
        print(f"  peak GPU memory {mapped_peak / 2**30:.2f} GiB | baseline {native_peak / 2**30:.2f} GiB"
              f" | ratio {mapped_peak / native_peak:.2f} | vs weights {mapped_peak / weights:.2f}")
    # Interleaved rounds, best of each: the order of measurement must not decide the ratio.
    for task, request in _requests(max_new_tokens).items():
        ours = min(_latency(mapped, request, device) for _ in range(rounds))
        base = min(_latency(native, request, device) for _ in range(rounds))
        print(f"  {task:9} {ours[0] * 1000:.0f} ms ({ours[1]} tokens, {ours[2]} tiles)"
              f" | baseline {base[0] * 1000:.0f} ms | ratio {ours[0] / base[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["internvl2-1b", "internvl2_5-4b"], choices=sorted(SEED_ARCHITECTURES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints: a smoke run of the same path")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints are written (default: a temp dir)")
    arguments = parser.parse_args()
    if arguments.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --tiny --device cpu for a smoke run)")
        return
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="vlmq-bench-"))
    try:
        for model_id in arguments.models:
            bench(model_id, workdir, device=arguments.device, tiny=arguments.tiny, max_new_tokens=arguments.max_new_tokens)
    finally:
        if arguments.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
