#!/usr/bin/env python3
"""Writes the committed bundle seeds in fuzz/corpus/bundle_unpack/ (run from anywhere).

A seed is the fuzz input format of `shoal_fuzz::bundle_check::upload_from_fuzz_input`: a 0
byte then a tar.zst (made with the `zstd` command), or a 1 byte then a plain tar that the
harness compresses. Seeds named seed-valid-* must be accepted; node/tests/fuzz_regressions.rs
checks that. Route seeds are plain text, written by hand.
"""
import io
import pathlib
import subprocess
import tarfile

OUT = pathlib.Path(__file__).resolve().parent / "corpus" / "bundle_unpack"


def tar_bytes(members, fmt=tarfile.GNU_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    # tarfile pads to 10 KiB records; keep the entries and the two zero blocks that end them.
    data = buffer.getvalue().rstrip(b"\0")
    return data.ljust(-(-len(data) // 512) * 512 + 1024, b"\0")


def entry(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


APP = [
    entry("./", tarfile.DIRTYPE, mode=0o755),
    entry("shoal.toml", data=b'name = "dash"\n'),
    entry("public/", tarfile.DIRTYPE, mode=0o755),
    entry("public/index.html", data=b"<h1>hi</h1>\n"),
    entry("public/run.sh", data=b"#!/bin/sh\n", mode=0o755),
    entry("public/home.html", tarfile.SYMTYPE, link="index.html"),
    entry("public/copy.html", tarfile.LNKTYPE, link="public/index.html"),
]

SEEDS = {
    "seed-valid-app-zstd": b"\0"
    + subprocess.run(["zstd", "-q", "-c", "-3"], input=tar_bytes(APP), capture_output=True, check=True).stdout,
    "seed-valid-app-tar": b"\1" + tar_bytes(APP),
    "seed-valid-pax-long-name": b"\1"
    + tar_bytes([entry("d/" + "n" * 150 + ".txt", data=b"x")], tarfile.PAX_FORMAT),
    "seed-valid-gnu-long-link": b"\1"
    + tar_bytes([entry("f", data=b"x"), entry("l" * 120, tarfile.SYMTYPE, link="./" * 60 + "f")]),
    "seed-dotdot": b"\1" + tar_bytes([entry("../escape", data=b"x")]),
    "seed-absolute": b"\1" + tar_bytes([entry("/tmp/escape", data=b"x")]),
    "seed-symlink-out-then-write": b"\1"
    + tar_bytes([entry("out", tarfile.SYMTYPE, link="../../.."), entry("out/escape", data=b"x")]),
    "seed-hardlink-out": b"\1" + tar_bytes([entry("h", tarfile.LNKTYPE, link="/etc/passwd")]),
    "seed-device": b"\1" + tar_bytes([entry("dev", tarfile.CHRTYPE), entry("fifo", tarfile.FIFOTYPE)]),
    "seed-bomb-zstd": b"\0"
    + subprocess.run(
        ["zstd", "-q", "-c", "-19"],
        input=tar_bytes([entry("zeros", data=bytes(2 * 1024 * 1024))]),
        capture_output=True,
        check=True,
    ).stdout,
}

OUT.mkdir(parents=True, exist_ok=True)
for name, data in SEEDS.items():
    (OUT / name).write_bytes(data)
    print(f"{OUT / name}: {len(data)} bytes")
