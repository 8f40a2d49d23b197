#!/usr/bin/env python
"""Offline wheel bundle: pick the wheels of a resolved install, write / verify the manifest.

Standard library only: ``verify`` runs with the target machine's bare Python before anything is
installed. ``scripts/make_offline_bundle.sh`` (a machine with a package index) calls ``plan`` and
``manifest``; ``scripts/setup_env.sh --offline`` (no network) calls ``verify``.

Bundle layout::

    BUNDLE/wheels/*.whl       every wheel to install (nothing else is read)
    BUNDLE/requirements.txt   name==version of every wheel (what the install asks pip for)
    BUNDLE/SHA256SUMS         sha256sum format, one line per wheel
    BUNDLE/manifest.json      target Python and platforms, the packages left out (expected on
                              the target), and per wheel: file, name, version, size, sha256

    python tools/offline_bundle.py plan REPORT.json [--with-torch] [--assume-present FILE]
    python tools/offline_bundle.py manifest BUNDLE --python 3.12 --platform TAG ... [--max-mib 40]
    python tools/offline_bundle.py verify BUNDLE [--python-version 3.12]
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time

# torch and what only torch needs: a cluster (or the GPU machine) has these with its CUDA build.
TORCH_STACK = ("torch", "torchvision", "triton", "nvidia-*", "cuda-*", "sympy", "mpmath", "networkx")
# Always bundled, even where the target has them: what builds the op (a venv made by Python <= 3.11
# gets an old setuptools of its own, which would hide a newer one of the base installation).
ALWAYS_BUNDLED = ("setuptools", "wheel")
MANIFEST_VERSION = 1


def canonical(name: str) -> str:
    """PEP 503 normalized project name (``Open_Clip.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _matches(name: str, patterns) -> bool:
    name = canonical(name)
    for pattern in patterns:
        pattern = canonical(pattern) if not pattern.endswith("*") else canonical(pattern[:-1]) + "*"
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


def read_name_list(path: str) -> list:
    """Project names from a file: one per line, ``#`` comments; ``pip freeze`` lines
    (``name==version``) are accepted too (the version is ignored)."""
    names = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*\*?)\s*(?:(==|>=|<=|~=|===|@).*)?$", line)
            if not match:
                raise ValueError(f"{path}:{number}: expected a project name (optionally name==version), got {line!r}")
            names.append(match.group(1))
    return names


def plan(report_path: str, with_torch: bool, assume_present: list) -> dict:
    """Splits the ``install`` list of a ``pip install --dry-run --report`` file into wheels to
    bundle and packages left out (torch stack unless ``with_torch``; names in ``assume_present``)."""
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    if "install" not in report:
        raise ValueError(f"{report_path}: not a pip installation report (no 'install' list)")
    bundle, left_out = [], []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        url = item["download_info"]["url"]
        if not with_torch and _matches(name, TORCH_STACK):
            left_out.append({"name": name, "version": version, "why": "torch stack (--with-torch not given)"})
        elif _matches(name, assume_present) and not _matches(name, ALWAYS_BUNDLED):
            left_out.append({"name": name, "version": version, "why": "assumed present on the target"})
        elif not url.endswith(".whl"):
            raise ValueError(f"{name} {version} resolved to a source archive ({url}); the bundle holds wheels only")
        else:
            bundle.append({"name": name, "version": version, "url": url})
    return {"bundle": bundle, "left_out": left_out}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wheel_name_version(filename: str):
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        raise ValueError(f"{filename}: not a wheel file name (name-version[-build]-python-abi-platform.whl)")
    return parts[0], parts[1]


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp", encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)


def write_manifest(
    bundle_dir: str, python: str, platforms: list, with_torch: bool, left_out: list, max_mib: float = 0.0
) -> dict:
    """Writes requirements.txt, SHA256SUMS and manifest.json for ``bundle_dir/wheels``."""
    wheel_dir = os.path.join(bundle_dir, "wheels")
    files = sorted(f for f in os.listdir(wheel_dir) if not f.startswith("."))
    if not files:
        raise ValueError(f"{wheel_dir}: no wheels")
    wheels, seen = [], {}
    for filename in files:
        name, version = _wheel_name_version(filename)
        if canonical(name) in seen:
            raise ValueError(f"{wheel_dir}: two wheels of {name}: {seen[canonical(name)]} and {filename}")
        seen[canonical(name)] = filename
        path = os.path.join(wheel_dir, filename)
        wheels.append(
            {
                "file": filename,
                "name": canonical(name),
                "version": version,
                "size": os.path.getsize(path),
                "sha256": sha256(path),
            }
        )
    total = sum(w["size"] for w in wheels)
    if max_mib and total > max_mib * 2**20:
        raise ValueError(
            f"{bundle_dir}: the wheels take {total / 2**20:.1f} MiB, over --max-mib {max_mib:g}; "
            f"largest: "
            + ", ".join(
                f"{w['file']} {w['size'] / 2**20:.1f} MiB" for w in sorted(wheels, key=lambda w: -w["size"])[:3]
            )
        )
    manifest = {
        "format": MANIFEST_VERSION,
        "python": python,
        "platforms": platforms,
        "with_torch": with_torch,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_bytes": total,
        "left_out": left_out,
        "wheels": wheels,
    }
    _write_atomic(
        os.path.join(bundle_dir, "requirements.txt"), "".join(f"{w['name']}=={w['version']}\n" for w in wheels)
    )
    _write_atomic(
        os.path.join(bundle_dir, "SHA256SUMS"), "".join(f"{w['sha256']}  wheels/{w['file']}\n" for w in wheels)
    )
    _write_atomic(os.path.join(bundle_dir, "manifest.json"), json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(bundle_dir: str, python_version: str = "") -> dict:
    """Checks that ``bundle_dir`` is whole: every wheel listed with its sha256, no wheel missing or
    unlisted, made for ``python_version`` (``X.Y``). Raises ValueError naming the problem."""
    path = os.path.join(bundle_dir, "manifest.json")
    if not os.path.isfile(path):
        raise ValueError(f"{bundle_dir}: no manifest.json; build the bundle with scripts/make_offline_bundle.sh")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_VERSION}")
    if python_version and manifest["python"] != python_version:
        raise ValueError(
            f"{path}: the bundle is for Python {manifest['python']}, this Python is {python_version}; "
            f"build one with scripts/make_offline_bundle.sh --python {python_version}"
        )
    wheel_dir = os.path.join(bundle_dir, "wheels")
    present = set(os.listdir(wheel_dir)) if os.path.isdir(wheel_dir) else set()
    listed = {w["file"]: w for w in manifest["wheels"]}
    missing = sorted(set(listed) - present)
    extra = sorted(f for f in present - set(listed) if f.endswith(".whl"))
    if missing:
        raise ValueError(f"{wheel_dir}: missing wheels listed in manifest.json: {', '.join(missing)}")
    if extra:
        raise ValueError(f"{wheel_dir}: wheels not in manifest.json: {', '.join(extra)}")
    for filename, entry in listed.items():
        digest = sha256(os.path.join(wheel_dir, filename))
        if digest != entry["sha256"]:
            raise ValueError(
                f"{wheel_dir}/{filename}: sha256 {digest} does not match manifest.json ({entry['sha256']})"
            )
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="wheels to bundle from a pip --report file (JSON on stdout)")
    p.add_argument("report")
    p.add_argument("--with-torch", action="store_true")
    p.add_argument("--assume-present", default="", help="file of project names the target already has")
    m = sub.add_parser("manifest", help="write requirements.txt, SHA256SUMS, manifest.json")
    m.add_argument("bundle")
    m.add_argument("--python", required=True)
    m.add_argument("--platform", action="append", default=[])
    m.add_argument("--with-torch", action="store_true")
    m.add_argument("--left-out", default="", help="JSON file of the plan (its left_out list is recorded)")
    m.add_argument("--max-mib", type=float, default=0.0, help="fail when the wheels take more (0: no limit)")
    v = sub.add_parser("verify", help="check a bundle's wheels against its manifest")
    v.add_argument("bundle")
    v.add_argument("--python-version", default="", help="X.Y the bundle must be for")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            names = read_name_list(args.assume_present) if args.assume_present else []
            print(json.dumps(plan(args.report, args.with_torch, names), indent=1))
        elif args.command == "manifest":
            left_out = []
            if args.left_out:
                with open(args.left_out, encoding="utf-8") as f:
                    left_out = json.load(f)["left_out"]
            manifest = write_manifest(args.bundle, args.python, args.platform, args.with_torch, left_out, args.max_mib)
            print(
                f"[offline_bundle] {len(manifest['wheels'])} wheels, {manifest['total_bytes'] / 2**20:.1f} MiB, "
                f"for Python {manifest['python']}; left out: "
                + (", ".join(sorted(x["name"] for x in left_out)) or "nothing")
            )
        else:
            manifest = verify(args.bundle, args.python_version)
            print(
                f"[offline_bundle] {args.bundle}: {len(manifest['wheels'])} wheels verified (sha256), "
                f"Python {manifest['python']}"
            )
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"[offline_bundle] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
