"""The wheels the GPU check carries: pins, a slimmer bitsandbytes, and checks that the set is complete.

    python bench/gpu/wheels.py pins trl bitsandbytes ...   # NAME==VERSION as installed in this venv
    python bench/gpu/wheels.py slim .whl                   # bitsandbytes keeps its CUDA 13 libraries only
    python bench/gpu/wheels.py closure .whl                # every requirement: in the image or carried
    python bench/gpu/wheels.py size .whl                   # what a device run would carry (limit 64 MiB)

The image's package list (``bench/gpu/image_packages.txt``) is copied from the device docs.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
IMAGE_PACKAGES = HERE / "image_packages.txt"
# bitsandbytes picks libbitsandbytes_cuda<torch.version.cuda>.so; the image's torch is built for CUDA 13.0.
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
BNB_LIBRARY = re.compile(r"libbitsandbytes_\w+\.so$")
CARRY_LIMIT = 64 * 2**20
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """Canonical name -> known version (None when unknown) of the GPU image's packages."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical distribution name, version) from a wheel's file name.

    >>> wheel_name(Path("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl"))
    ('pydantic-core', '2.50.5')
    """
    name, version = path.name.split("-")[:2]
    return canonicalize_name(name), version


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's unconditional requirements on the image's Python and platform."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def closure(folder: Path) -> tuple[list[str], list[str]]:
    """(problems, unchecked): requirements neither carried nor in the image, or a known version outside
    a range; and version ranges on image packages whose version the docs do not give."""
    image = image_packages()
    carried = dict(wheel_name(w) for w in folder.glob("*.whl"))
    problems, unchecked = [], []
    for wheel in sorted(folder.glob("*.whl")):
        for req in requirements(wheel):
            name = canonicalize_name(req.name)
            version = carried.get(name, image.get(name))
            if not version and req.specifier:
                unchecked.append(f"{wheel_name(wheel)[0]} needs {req}")
            if name not in carried and name not in image:
                problems.append(f"{wheel.name}: needs {req}, neither carried nor in the image")
            elif version and req.specifier and not SpecifierSet(str(req.specifier)).contains(version, prereleases=True):
                where = "carried" if name in carried else "in the image"
                problems.append(f"{wheel.name}: needs {req}, {where} is {version}")
    return problems, unchecked


def slim_bitsandbytes(folder: Path) -> None:
    """Rewrite the bitsandbytes wheel without the libraries of other CUDA and ROCm versions (RECORD updated)."""
    for wheel in folder.glob("bitsandbytes-*.whl"):
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
            kept = [i for i in src.infolist() if not BNB_LIBRARY.search(i.filename) or BNB_KEEP.search(i.filename)]
            record = next(i.filename for i in kept if i.filename.endswith(".dist-info/RECORD"))
            lines = []
            for info in kept:
                if info.filename == record:
                    continue
                data = src.read(info)
                dst.writestr(info, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                lines.append(f"{info.filename},sha256={digest},{len(data)}")
            dst.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
        slim.replace(wheel)


def carried_size(folder: Path) -> tuple[int, int]:
    """(bytes of the working tree that travels anyway, bytes of ``folder``)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum(Path(p).stat().st_size for p in listed if p and Path(p).is_file())
    return tree, sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "pins":
        print(" ".join(f"{name}=={md.version(name)}" for name in args))
    elif command == "slim":
        slim_bitsandbytes(Path(args[0]))
    elif command == "closure":
        problems, unchecked = closure(Path(args[0]))
        print("\n".join(problems) or f"closure: every requirement of {args[0]}/*.whl is carried or in the image")
        if unchecked:
            print("versions unknown in the image, so unchecked: " + "; ".join(sorted(set(unchecked))))
        return 1 if problems else 0
    elif command == "size":
        tree, carried = carried_size(Path(args[0]))
        total = tree + carried
        print(f"carry: working tree {tree / 2**20:.1f} MiB + {args[0]} {carried / 2**20:.1f} MiB = "
              f"{total / 2**20:.1f} MiB (limit {CARRY_LIMIT / 2**20:.0f} MiB)")
        return 1 if total > CARRY_LIMIT else 0
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
