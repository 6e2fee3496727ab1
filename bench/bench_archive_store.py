"""Which S3 client the archive uses, measured: pyarrow.fs.S3FileSystem (already
a dependency, for Parquet) against boto3 (the usual choice, not a dependency)
on a real S3 server (SeaweedFS, `weed mini`), in one run, alternating rounds.

Each round uploads and reads back what an archive run moves for a small
stream-day set: N files of S MB (a day's L2 Parquet file of a busy symbol is
tens of MB) and M small objects (manifests), then lists them.

    python bench/bench_archive_store.py [--files 8] [--mb 16] [--small 100] [--rounds 3]

boto3 is measured only if installed (`pip install boto3`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import exit_on_sigterm, machine_line
from objectstore import BUCKET, s3_server


def pyarrow_client(env: dict[str, str]) -> dict[str, Callable]:
    os.environ.update(env)
    from depthwatch.archive.store import open_store

    store = open_store(f"s3://{BUCKET}/bench-pyarrow", retry_for_s=0)

    def put(name: str, path: Path) -> None:
        store.put(name, path)

    def get(name: str) -> str:
        stored = store.stored(name)
        assert stored is not None
        return stored.sha256

    def listing(prefix: str) -> int:
        return len(list(store.list(prefix)))

    return {"put": put, "get": get, "list": listing}


def boto3_client(env: dict[str, str]) -> dict[str, Callable] | None:
    try:
        import boto3
    except ImportError:
        return None
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    prefix = "bench-boto3"

    def put(name: str, path: Path) -> None:
        client.upload_file(str(path), BUCKET, f"{prefix}/{name}")

    def get(name: str) -> str:
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["Body"]
        sha = hashlib.sha256()
        for block in body.iter_chunks(1 << 20):
            sha.update(block)
        return sha.hexdigest()

    def listing(sub: str) -> int:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{prefix}/{sub}"
        )
        return sum(len(page.get("Contents", [])) for page in pages)

    return {"put": put, "get": get, "list": listing}


def one_round(client: dict[str, Callable], big: list[Path], small: list[Path]) -> dict[str, float]:
    figures = {}
    big_mb = sum(p.stat().st_size for p in big) / 1e6
    started = time.perf_counter()
    for i, path in enumerate(big):
        client["put"](f"big/{i}.bin", path)
    figures["big put MB/s"] = big_mb / (time.perf_counter() - started)
    started = time.perf_counter()
    for i, _ in enumerate(big):
        client["get"](f"big/{i}.bin")
    figures["big get MB/s"] = big_mb / (time.perf_counter() - started)
    started = time.perf_counter()
    for i, path in enumerate(small):
        client["put"](f"small/{i}.json", path)
    figures["small put /s"] = len(small) / (time.perf_counter() - started)
    started = time.perf_counter()
    for i, _ in enumerate(small):
        client["get"](f"small/{i}.json")
    figures["small get /s"] = len(small) / (time.perf_counter() - started)
    started = time.perf_counter()
    assert client["list"]("small") == len(small)
    figures["list ms"] = (time.perf_counter() - started) * 1000
    return figures


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mb", type=float, default=16)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_line(detail=True))
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        base = Path(tmp)
        big = []
        for i in range(args.files):
            path = base / f"big{i}.bin"
            path.write_bytes(os.urandom(int(args.mb * 1e6)))
            big.append(path)
        small = []
        for i in range(args.small):
            path = base / f"small{i}.json"
            path.write_bytes(os.urandom(3_000))
            small.append(path)
        with s3_server(base / "s3") as server:
            env = server.env()
            clients = {"pyarrow.fs": pyarrow_client(env), "boto3": boto3_client(env)}
            results: dict[str, list[dict[str, float]]] = {n: [] for n, c in clients.items() if c}
            if clients["boto3"] is None:
                print("boto3 not installed: pip install boto3 to compare")
            for _ in range(args.rounds):
                for name, client in clients.items():
                    if client is not None:
                        results[name].append(one_round(client, big, small))
    print(f"{args.files} x {args.mb:g} MB, {args.small} x 3 KB, median of {args.rounds} rounds")
    keys = list(next(iter(results.values()))[0])
    print(f"{'':12}" + "".join(f"{k:>16}" for k in keys))
    medians = {
        n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in results.items()
    }
    for name, figures in medians.items():
        print(f"{name:12}" + "".join(f"{figures[k]:>16,.1f}" for k in keys))
    if "boto3" in medians:
        ratio = {k: medians["pyarrow.fs"][k] / medians["boto3"][k] for k in keys}
        print(f"{'ratio':12}" + "".join(f"{ratio[k]:>16.2f}" for k in keys))


if __name__ == "__main__":
    main()
