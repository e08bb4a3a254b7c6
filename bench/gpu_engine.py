"""The continuous-batching engine alone, in this process: decode tokens/s by concurrency, vision
tiles/s, time to first token and peak memory, on random-weight models of the real shapes.

    python bench/gpu_engine.py                          # InternVL2-1B and InternVL2_5-4B shapes on cuda
    python bench/gpu_engine.py --sizes 4b               # one of them
    python bench/gpu_engine.py --device cpu --tiny      # the tiny test model on CPU (smoke, < 60 s)

Needs only torch, transformers, safetensors, sentencepiece, pillow and numpy: no API, database,
queue or object store. Full-size checkpoints are built as ``bench/gpu_seed_models.py`` builds them
(``build_original_checkpoint(..., full_size=True)``, in the original format, into a temp dir).

Per model it prints one line per measurement:

    1b rows=8: 1234.5 tokens/s (mean rows 7.9; 1024 tokens in 0.83 s; decode steps alone 1300.2 tokens/s)
    1b vision: 410.3 tiles/s (224 tiles in 0.55 s; 31.2% of H100 bf16 dense)
    1b ttft: 41.2 ms (median of 3; one image, 7 tiles)
    1b peak memory: 5.12 GiB (torch.cuda.max_memory_allocated)

- decode: 1, 8, 32 and 64 text-only chat requests submitted at once to one engine of 64 rows,
  greedy; tokens/s is every row's actual output tokens (a random model may hit its stop token
  early) over the wall time from submission to the last result (prefill included: that is what a
  caller of the engine waits for), and "decode steps alone" the same tokens less the one each
  prefill makes, over the engine's own decode-step time;
- vision: a batch of image requests (1344×896, ``max_tiles`` 6: a 3×2 grid and the thumbnail, 7 tiles),
  ``max_new_tokens`` 1, prepared (tiled) before the clock starts; tiles/s over submission to the
  last result (vision tower and prefill). On cuda, the share of an H100's dense bf16 roofline
  (989 TFLOP/s) that the vision tower's FLOPs at that rate would use;
- ttft: one image request, ``max_new_tokens`` 1, on an idle engine, from its preparation (tiling)
  to its result; median of 3;
- peak memory: ``torch.cuda.max_memory_allocated`` since the model was loaded (less what was
  allocated before it) on cuda; the process's ``ru_maxrss`` on cpu.

Then one line ``summary: {json}`` with every number. On a GPU it keeps to 8 minutes: a size that
would start after 7 is skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.gpu_seed_models import _image, _sync  # noqa: E402  (the same test image and sync as the seed-model bench)
from workers.inference.fixtures.original import build_original_checkpoint  # noqa: E402
from workers.inference.runtime.engine import Engine, EngineLoop, EngineOptions  # noqa: E402
from workers.inference.runtime.loading import LoadOptions  # noqa: E402
from workers.inference.runtime.model import InternVLRuntime  # noqa: E402
from workers.inference.runtime.requests import GenerationRequest  # noqa: E402

# The seed model whose full-size shapes each --sizes name stands for.
MODEL_IDS = {"1b": "internvl2-1b", "4b": "internvl2_5-4b"}
CONCURRENCY = [1, 8, 32, 64]
MAX_ROWS = max(CONCURRENCY)
# Per row slot: room for a 6-tile prompt (7 × 256 image tokens) and its answer; on a GPU the slots
# are preallocated at kv_tokens / max_rows and every decode step reads all of it, so this also sets
# how much KV each step reads (the default 65,536 / 64 = 1,024 could not hold a 6-tile prompt).
SLOT_TOKENS = 2048
MAX_TILES = 6
H100_BF16_DENSE_FLOPS = 989e12  # as bench/worker_throughput.py, which cannot be imported here (httpx)
BUDGET_S = 7 * 60  # no new size starts after this: the whole run stays under 8 minutes on an H100
CHAT_PROMPT = "Tell me a long story about a lighthouse keeper and the ships that pass in the night."


def vision_flops_per_tile(vision_config) -> float:
    """Dense FLOPs of one 448×448 tile through the vision encoder: the formula of
    ``bench/worker_throughput.py::vision_flops_per_tile`` (which reads config.json; this takes the
    loaded model's vision config, the same numbers for either checkpoint format). Per layer, over
    1025 tokens (32×32 patches and the class token): 2·tokens·(4·width² for QKV and output
    projections + 2·width·intermediate for the MLP), plus 4·tokens²·width for the attention itself."""
    tokens, width = (448 // 14) ** 2 + 1, vision_config.hidden_size
    per_layer = 2 * tokens * (4 * width * width + 2 * width * vision_config.intermediate_size) + 4 * tokens * tokens * width
    return vision_config.num_hidden_layers * per_layer


def _run(engine: Engine, requests: list[GenerationRequest], runtime: InternVLRuntime, device: str) -> tuple[list, float]:
    """Every request prepared first (tiling is not the engine's work), then submitted at once; the
    results and the seconds from submission to the last of them."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        prepared = list(pool.map(runtime.prepare, requests))
    _sync(device)
    started = time.perf_counter()
    futures = engine.submit_all(prepared, [None] * len(prepared))
    results = [future.result() for future in futures]
    _sync(device)
    return results, time.perf_counter() - started


def _chat(max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest("chat", CHAT_PROMPT, [], max_new_tokens=max_new_tokens, temperature=0.0)


def _vision(max_new_tokens: int = 1) -> GenerationRequest:
    # The seed-model bench's picture at 3:2, whose grid under max_tiles 6 is the full 3×2 (its own
    # 16:9 gets 2×1): the tiles/s then come from requests at the tile cap.
    image = _image().resize((1344, 896))
    return GenerationRequest("caption", None, [image], max_tiles=MAX_TILES, max_new_tokens=max_new_tokens)


def _checkpoint(size: str, workdir: Path, device: str) -> Path:
    if size == "tiny":
        from workers.inference.tiny_model import build_tiny_model

        return build_tiny_model(workdir / "tiny")
    # Generated on the GPU when there is one: full-size random weights are slow to draw on CPU.
    return build_original_checkpoint(workdir / MODEL_IDS[size], MODEL_IDS[size], full_size=True, device=device)


def bench_size(size: str, workdir: Path, *, device: str, tiny: bool) -> dict:
    cuda = device.startswith("cuda")
    max_new_tokens = 16 if tiny else 128
    vision_requests = 8 if tiny else 32
    started = time.perf_counter()
    path = _checkpoint(size, workdir, device)
    built_s = time.perf_counter() - started

    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # A previous size's model may still be referenced (see the report on EngineLoop): its bytes
        # are not this model's.
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    runtime = InternVLRuntime.load(path, LoadOptions(device=device))
    _sync(device)
    load_s = time.perf_counter() - started
    # One engine of 64 rows for every level: the slots are allocated once, as the worker's are, and
    # a level uses the first N of them.
    engine = EngineLoop().attach(Engine(runtime, EngineOptions(max_rows=MAX_ROWS, kv_tokens=MAX_ROWS * SLOT_TOKENS),
                                        name=size))
    report: dict = {"checkpoint": path.name, "built_s": round(built_s, 2), "load_s": round(load_s, 2),
                    "max_new_tokens": max_new_tokens, "decode": {}}
    print(f"{size}: {'tiny' if tiny else 'full size'} on {device}, built in {built_s:.1f}s, loaded in {load_s:.1f}s",
          flush=True)

    if cuda:  # kernels, cuBLAS heuristics and the allocator, for text rows and for images
        _run(engine, [_chat(8)] * 8, runtime, device)
        _run(engine, [_vision()] * 2, runtime, device)

    for rows in CONCURRENCY:
        steps, row_steps, decode_s = engine.stats.steps, engine.stats.row_steps, engine.stats.decode_s
        results, seconds = _run(engine, [_chat(max_new_tokens) for _ in range(rows)], runtime, device)
        tokens = sum(result.output_tokens for result in results)
        phase_steps, phase_decode_s = engine.stats.steps - steps, engine.stats.decode_s - decode_s
        mean_rows = (engine.stats.row_steps - row_steps) / phase_steps if phase_steps else 0.0
        # The first token of each row comes from its prefill, not from a decode step.
        stepped_tokens = tokens - len(results)
        decode_only = stepped_tokens / phase_decode_s if phase_decode_s else 0.0
        entry = {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
                 "mean_rows": round(mean_rows, 2), "decode_steps": phase_steps,
                 "decode_step_tokens_per_s": round(decode_only, 1),
                 "stopped_early": sum(result.finish_reason == "stop" for result in results)}
        report["decode"][str(rows)] = entry
        print(f"{size} rows={rows}: {entry['tokens_per_s']} tokens/s (mean rows {mean_rows:.1f}; {tokens} tokens in "
              f"{seconds:.2f} s; decode steps alone {decode_only:.1f} tokens/s)", flush=True)

    results, seconds = _run(engine, [_vision() for _ in range(vision_requests)], runtime, device)
    tiles = sum(result.tiles for result in results)
    report["vision"] = {"requests": vision_requests, "tiles": tiles, "seconds": round(seconds, 4),
                        "tiles_per_s": round(tiles / seconds, 1)}
    line = f"{size} vision: {tiles / seconds:.1f} tiles/s ({tiles} tiles in {seconds:.2f} s"
    if cuda:
        share = tiles / seconds * vision_flops_per_tile(runtime.model.config.vision_config) / H100_BF16_DENSE_FLOPS
        report["vision"]["h100_bf16_roofline_share"] = round(share, 4)
        line += f"; {share:.1%} of H100 bf16 dense"
    print(line + ")", flush=True)

    latencies, ttft_tiles = [], 0
    for _ in range(3):  # each on an idle engine: the previous one has its result before the next
        _sync(device)
        started = time.perf_counter()
        (result,) = engine.submit_all([runtime.prepare(_vision())], [None])
        ttft_tiles = result.result().tiles
        _sync(device)
        latencies.append((time.perf_counter() - started) * 1000)
    report["ttft_ms"] = round(statistics.median(latencies), 2)
    print(f"{size} ttft: {report['ttft_ms']} ms (median of 3; one image, {ttft_tiles} tiles)", flush=True)

    if cuda:
        peak, source = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    else:  # Linux reports ru_maxrss in KiB; the whole process's peak so far, not this model's alone
        peak, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    report["peak_memory_bytes"], report["peak_memory_source"] = peak, source
    print(f"{size} peak memory: {peak / 2**30:.2f} GiB ({source})", flush=True)
    report["engine_out_of_memory"] = engine.stats.out_of_memory

    # The engine loop's thread keeps the engine and so the runtime referenced; the KV slots at
    # least can go before the next size loads.
    engine.slots = None
    del runtime
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model and few tokens: a smoke run")
    parser.add_argument("--sizes", default="1b,4b", help="comma-separated, of: " + ", ".join(MODEL_IDS))
    arguments = parser.parse_args()
    if arguments.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --device cpu --tiny for a smoke run)")
        sys.exit(2)
    sizes = ["tiny"] if arguments.tiny else [size.strip() for size in arguments.sizes.split(",") if size.strip()]
    unknown = [size for size in sizes if size not in MODEL_IDS and size != "tiny"]
    if unknown:
        parser.error(f"unknown sizes {unknown}: choose from {', '.join(MODEL_IDS)}")

    began = time.perf_counter()
    summary: dict = {"benchmark": "gpu_engine", "device": arguments.device, "tiny": arguments.tiny,
                     "concurrency": CONCURRENCY, "max_rows": MAX_ROWS, "models": {}, "skipped": []}
    if arguments.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="vlmq-engine-bench-") as workdir:
        for size in sizes:
            elapsed = time.perf_counter() - began
            if elapsed > BUDGET_S:
                print(f"skipping {size}: {elapsed:.0f}s spent, over the {BUDGET_S}s budget", flush=True)
                summary["skipped"].append(size)
                continue
            summary["models"][size] = bench_size(size, Path(workdir), device=arguments.device, tiny=arguments.tiny)
    summary["elapsed_s"] = round(time.perf_counter() - began, 1)
    print("summary: " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
