"""Bulk indexing at scale: 1,000 generated short videos through the API and workers, then search
latency over their segments plus 100,000 synthetic ones, on PostgreSQL and on SQLite.

    python bench/index_scale.py [--videos 1000] [--synthetic 100000] [--backends postgresql sqlite]

Not part of `make test`. Per backend it starts Redis, an S3-less local storage directory, the API,
one inference worker with the tiny model, the frames worker and a web server on loopback that serves
the videos (2 to 6 s, 64×48, 25 fps; indexed by URL in 2 s segments of 2 frames). It prints JSON:
videos per minute, segments, the database's size, and the search latency (p50/p99 over 300 queries
through the HTTP API, and the database query alone). Target: search p99 under 50 ms on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from bench.harness import API_KEY  # noqa: E402
from shared.db.engine import get_engine, session_scope  # noqa: E402
from shared.db.models import IndexSegment, IndexVideo, utcnow  # noqa: E402
from shared.indexes.search import search_segments  # noqa: E402
from tests.support.media_server import MediaServer, Reply  # noqa: E402
from tests.support.services import REPO_ROOT, RedisServer, Stack, create_database, drop_database, migrate  # noqa: E402
from tests.support.videos import make_video  # noqa: E402

ADJECTIVES = ("red", "small", "old", "bright", "quiet", "busy", "wooden", "snowy", "green", "tall", "wet", "golden")
NOUNS = ("panda", "car", "river", "kitchen", "tree", "street", "dog", "bicycle", "mountain", "market", "train",
         "child", "boat", "bridge", "garden", "window", "horse", "beach", "forest", "crowd")
VERBS = ("walks past", "climbs", "crosses", "waits near", "runs along", "sits under", "drives through", "looks at")


def sentence(rng: random.Random) -> str:
    return (f"A {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def add_synthetic_segments(database_url: str, index_id: str, tenant_id: str, count: int) -> None:
    rng = random.Random(7)
    with session_scope(database_url) as session:
        video = IndexVideo(id=f"ivd_synthetic{time.time_ns()}", index_id=index_id, tenant_id=tenant_id,
                           position=10**6, external_id="synthetic", source={"object_key": "synthetic"},
                           status="succeeded", segments_done=count, attempts=1, created_at=utcnow())
        session.add(video)
        session.flush()
        now = utcnow()
        for start in range(0, count, 5000):
            session.execute(insert(IndexSegment), [
                {"index_id": index_id, "video_id": video.id, "position": 10**6, "external_id": "synthetic",
                 "seq": seq, "batch": 0, "start_s": seq * 10.0, "end_s": seq * 10.0 + 10, "frames": [],
                 "text": sentence(rng), "thumbnail_key": None, "created_at": now}
                for seq in range(start, min(start + 5000, count))
            ])
        session.commit()
    if database_url.startswith("postgresql"):
        with get_engine(database_url).connect() as connection:
            connection.execute(text("ANALYZE index_segments"))
            connection.commit()


def database_size(database_url: str, data_dir: Path) -> int:
    if database_url.startswith("postgresql"):
        with get_engine(database_url).connect() as connection:
            return int(connection.scalar(text("SELECT pg_database_size(current_database())")))
    # SQLite in WAL mode: the main file plus the write-ahead log not yet checkpointed into it.
    return sum(path.stat().st_size for path in data_dir.glob("vlmq.db*"))


def run_backend(backend: str, videos: dict[str, bytes], synthetic: int, queries: int) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"vlmq-index-scale-{backend}-"))
    from workers.inference.tiny_model import build_tiny_model

    model_dir = build_tiny_model(data_dir / "models" / "internvl-tiny")
    redis = RedisServer(data_dir / "redis").start()
    database = create_database() if backend == "postgresql" else None
    database_url = database[1] if database else f"sqlite:///{data_dir / 'vlmq.db'}"
    migrate(database_url)
    server = MediaServer()
    urls = {name: server.serve(f"/{name}.mp4", Reply(body=data)) for name, data in videos.items()}
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update({
        "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", "VLMQ_DATABASE_URL": database_url,
        "VLMQ_BROKER_URL": redis.url, "VLMQ_STORAGE_URL": (data_dir / "storage").as_uri(),
        "VLMQ_MODEL_PATH": str(model_dir), "VLMQ_API_KEYS": f"bench:{API_KEY}",
        "VLMQ_ALLOW_PRIVATE_NETWORKS": "true", "VLMQ_API_ACCESS_LOG": "false",
    })
    stack = Stack.start(env, data_dir)
    client = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    try:
        began = time.monotonic()
        created = client.post("/v1/video-indexes", json={
            "name": "scale", "segment_s": 2, "frames_per_segment": 2, "max_new_tokens": 8,
            "videos": [{"url": url, "external_id": name} for name, url in urls.items()],
        })
        created.raise_for_status()
        index_id = created.json()["id"]
        while True:
            index = client.get(f"/v1/video-indexes/{index_id}").json()
            if index["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(1)
        elapsed = time.monotonic() - began
        add_synthetic_segments(database_url, index_id, "bench", synthetic)
        rng = random.Random(11)
        words = [rng.choice(NOUNS) if rng.random() < 0.6 else f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
                 for _ in range(queries)]
        http_ms, db_ms, hits = [], [], []
        for query in words:
            started = time.perf_counter()
            response = client.get(f"/v1/video-indexes/{index_id}/search", params={"q": query, "limit": 20})
            http_ms.append((time.perf_counter() - started) * 1000)
            hits.append(len(response.json()["data"]))
        with session_scope(database_url) as session:
            for query in words:
                started = time.perf_counter()
                search_segments(session, index_id, query, limit=20)
                db_ms.append((time.perf_counter() - started) * 1000)
        counts = index["counts"]
        return {
            "backend": backend, "status": index["status"], "videos": counts["videos_total"],
            "videos_done": counts["videos_done"], "videos_failed": counts["videos_failed"],
            "segments": counts["segments_done"], "seconds": round(elapsed, 1),
            "videos_per_minute": round(counts["videos_total"] / elapsed * 60, 1),
            "segments_searched": counts["segments_done"] + synthetic,
            "database_bytes": database_size(database_url, data_dir),
            "search_http_ms": {"p50": round(statistics.median(http_ms), 2), "p99": round(percentile(http_ms, 0.99), 2)},
            "search_db_ms": {"p50": round(statistics.median(db_ms), 2), "p99": round(percentile(db_ms, 0.99), 2)},
            "mean_hits_per_query": round(statistics.mean(hits), 1),
        }
    finally:
        client.close()
        stack.stop()
        server.close()
        redis.stop()
        if database:
            drop_database(database[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vlmq-index-videos-"))
    rng = random.Random(3)
    videos = {
        f"clip-{number:04d}": make_video(folder / f"{number}.mp4", seconds=rng.choice((2, 3, 4, 5, 6)), fps=25,
                                         gop=25).read_bytes()
        for number in range(args.videos)
    }
    for backend in args.backends:
        print(json.dumps(run_backend(backend, videos, args.synthetic, args.queries)), flush=True)


if __name__ == "__main__":
    main()
