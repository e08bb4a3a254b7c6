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


def _measure(path: Path, device: str, max_new_tokens: int) -> dict:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    runtime = InternVLRuntime.load(path, LoadOptions(device=device))
    _sync(device)
    load_s = time.perf_counter() - started
    requests = {
        "caption": GenerationRequest("caption", None, [_image()], max_tiles=6, max_new_tokens=max_new_tokens),
        "grounding": GenerationRequest("grounding", "the red box", [_image()], max_tiles=6, max_new_tokens=max_new_tokens),
    }
    runtime.run([requests["caption"]])  # warm-up: kernels, allocator
    latency = {}
    for task, request in requests.items():
        _sync(device)
        started = time.perf_counter()
        (result,) = runtime.run([request])
        _sync(device)
        latency[task] = {"s": time.perf_counter() - started, "output_tokens": result.output_tokens, "tiles": result.tiles}
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return {"runtime": runtime, "load_s": load_s, "peak_bytes": peak, "latency": latency}


def _native_copy(runtime: InternVLRuntime, original_dir: Path, target: Path) -> Path:
    """The same weights as a native "-hf" checkpoint: the baseline transformers loads by itself."""
    runtime.model.save_pretrained(target)
    for file in original_dir.glob("tokenizer*"):
        shutil.copy(file, target / file.name)
    config = json.loads((target / "config.json").read_text())
    config["template"] = runtime.checkpoint.template.name
    (target / "config.json").write_text(json.dumps(config))
    return target


def bench(model_id: str, workdir: Path, *, device: str, tiny: bool, max_new_tokens: int) -> None:
    original_dir = workdir / f"{model_id}-original"
    started = time.perf_counter()
    build_original_checkpoint(original_dir, model_id, full_size=not tiny, device=device)
    build_s = time.perf_counter() - started
    mapped = _measure(original_dir, device, max_new_tokens)
    native_dir = _native_copy(mapped.pop("runtime"), original_dir, workdir / f"{model_id}-native")
    baseline = _measure(native_dir, device, max_new_tokens)
    baseline.pop("runtime")
    weights = sum(file.stat().st_size for file in original_dir.glob("*.safetensors"))
    print(f"\n{model_id} ({'tiny' if tiny else 'full size'}, {device}; weights {weights / 2**30:.2f} GiB, built in {build_s:.1f}s)")
    print(f"  load     vlmq original-format {mapped['load_s']:.2f}s | native baseline {baseline['load_s']:.2f}s"
          f" | ratio {mapped['load_s'] / baseline['load_s']:.2f}")
    if mapped["peak_bytes"]:
        print(f"  peak GPU memory {mapped['peak_bytes'] / 2**30:.2f} GiB | baseline {baseline['peak_bytes'] / 2**30:.2f} GiB"
              f" | ratio {mapped['peak_bytes'] / baseline['peak_bytes']:.2f} | vs weights {mapped['peak_bytes'] / weights:.2f}")
    for task in ("caption", "grounding"):
        ours, base = mapped["latency"][task], baseline["latency"][task]
        print(f"  {task:9} {ours['s'] * 1000:.0f} ms ({ours['output_tokens']} tokens, {ours['tiles']} tiles)"
              f" | baseline {base['s'] * 1000:.0f} ms | ratio {ours['s'] / base['s']:.2f}")


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
