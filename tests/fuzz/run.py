"""Run the fuzz targets: `python -m tests.fuzz.run [--seconds N] [TARGET ...]`.

Each target runs in its own process with atheris (libFuzzer) for N seconds, starting from its
committed corpus; new interesting inputs go to a scratch folder, never into the repository. A
crash, timeout or out-of-memory input is copied into tests/fuzz/corpus/<target>/ so that, once
fixed, `make test` replays it for good. Without atheris (a platform with no wheel) a plain
random mutator stands in. Exit status 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.fuzz import CORPUS, corpus_files, load_targets

MAX_LEN = 16384
PER_INPUT_TIMEOUT = 10
RSS_LIMIT_MB = 2048


def _save_crashers(name: str, scratch: Path) -> list[Path]:
    saved = []
    dest = CORPUS / name
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(scratch.iterdir()):
        if path.name.startswith(("crash-", "timeout-", "oom-", "leak-")):
            target = dest / path.name
            shutil.copyfile(path, target)
            saved.append(target)
    return saved


def _run_one_atheris(name: str, seconds: int, scratch: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["wcs"]):
        targets = load_targets()
    fn = targets[name]
    work = scratch / "corpus"
    work.mkdir()
    seeds = CORPUS / name
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={scratch}/",
        "-print_final_stats=1",
        str(work),
    ]
    if seeds.is_dir():
        args.append(str(seeds))
    atheris.Setup(args, fn)
    atheris.Fuzz()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 0x7F, 0x80, 0xFF))
        else:
            start = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[start : start + rng.randint(1, 256)]
    return bytes(buf[:MAX_LEN])


def _run_one_random(name: str, seconds: int, scratch: Path) -> None:
    fn = load_targets()[name]
    seeds = [p.read_bytes() for p in corpus_files(name)] or [b""]
    rng = random.Random()
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(seeds))
        try:
            fn(data)
        except Exception:
            crash = scratch / f"crash-random-{runs}"
            crash.write_bytes(data)
            traceback.print_exc()
            sys.exit(1)
        runs += 1
    print(f"{name}: {runs} random inputs in {seconds} s, no crash")


def run_one(name: str, seconds: int, scratch: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        _run_one_random(name, seconds, scratch)
    else:
        _run_one_atheris(name, seconds, scratch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=30, help="time per target")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one, args.seconds, Path(args.scratch))
        return 0
    targets = load_targets()
    if args.list:
        print("\n".join(targets))
        return 0
    names = args.targets or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    failed = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
            scratch = Path(tmp)
            cmd = [sys.executable, "-m", "tests.fuzz.run", "--one", name]
            cmd += ["--seconds", str(args.seconds), "--scratch", tmp]
            print(f"== {name} ({args.seconds} s)", flush=True)
            code = subprocess.run(cmd, env={**os.environ, "PYTHONHASHSEED": "0"}).returncode
            saved = _save_crashers(name, scratch)
            if code != 0 or saved:
                failed.append(name)
                for path in saved:
                    print(f"   crasher saved: {path}", flush=True)
    print(f"fuzzed {len(names)} targets for {args.seconds} s each: ", end="")
    print(f"{len(failed)} crashed ({', '.join(failed)})" if failed else "no crash")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
