#!/usr/bin/env python3
"""Vendor htmx 4 and its SSE / upsert extensions into the taskstate static folder.

Runs ``npm pack htmx.org@<PINNED_VERSION>`` in a temporary directory, extracts the
files listed in ``VENDORED_FILES``, verifies each against its pinned sha256 and
writes them (plus a README.md) to ``taskstate/static/taskstate/vendor/``.

Usage::

    python scripts/vendor_htmx.py            # (re)write the vendored files
    python scripts/vendor_htmx.py --check    # only verify the files already vendored

To upgrade: run with ``--print-hashes --package-version X`` to see the new digests,
review the upstream diff, then update ``PINNED_VERSION`` and the pinned sha256 values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "htmx.org"
PINNED_VERSION = "4.0.1"
LICENSE_NAME = "Zero-Clause BSD (0BSD)"

REPO_ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = REPO_ROOT / "taskstate" / "static" / "taskstate" / "vendor"


@dataclass(frozen=True)
class VendoredFile:
    """One file taken from the npm tarball."""

    archive_path: str  # path inside the tarball (always under "package/")
    dest_name: str  # file name inside VENDOR_DIR
    sha256: str
    description: str


VENDORED_FILES: tuple[VendoredFile, ...] = (
    VendoredFile(
        archive_path="package/dist/htmx.min.js",
        dest_name="htmx.min.js",
        sha256="a0abb04f2f45a1f89d1d4844023245537e5e6014c87b144553e0607b4cc32130",
        description="htmx core, minified (IIFE build, defines global `htmx`)",
    ),
    VendoredFile(
        archive_path="package/dist/ext/hx-sse.js",
        dest_name="hx-sse.js",
        sha256="8bd89f42bf6b61b459dace65046154bb80254ea380b9868c494c0ff33018f3d6",
        description="SSE extension (registers as `sse`), unminified",
    ),
    VendoredFile(
        archive_path="package/dist/ext/hx-upsert.js",
        dest_name="hx-upsert.js",
        sha256="8e93104b216390314faf95bcf4a8aaa0c06fb6b178bdfb2ba789dd1ac9396564",
        description="upsert swap extension (registers as `upsert`), unminified",
    ),
    VendoredFile(
        archive_path="package/LICENSE",
        dest_name="htmx-LICENSE.txt",
        sha256="d3d2456f76414f2456104660ebd65aff1c04cd7966b942bdabd63f3cdb316a38",
        description="htmx licence text",
    ),
)


class VendorError(RuntimeError):
    """Raised when the package cannot be fetched or a file does not match its pin."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npm_pack(version: str, dest: Path) -> Path:
    """Run ``npm pack`` into ``dest`` and return the path of the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm not found on PATH")
    spec = f"{PACKAGE}@{version}"
    result = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(dest)],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VendorError(f"npm pack {spec} failed:\n{result.stderr}")
    try:
        info = json.loads(result.stdout)
        filename = str(info[0]["filename"])
    except (ValueError, LookupError, TypeError) as exc:
        raise VendorError(f"unexpected npm pack output: {result.stdout!r}") from exc
    tarball = dest / filename
    if not tarball.is_file():
        raise VendorError(f"npm pack did not produce {tarball}")
    return tarball


def read_members(tarball: Path, names: list[str]) -> dict[str, bytes]:
    """Read the named regular-file members from the tarball (no extraction to disk)."""
    contents: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for name in names:
            try:
                member = tar.getmember(name)
            except KeyError as exc:
                raise VendorError(f"{name} missing from {tarball.name}") from exc
            if not member.isfile():
                raise VendorError(f"{name} in {tarball.name} is not a regular file")
            fileobj = tar.extractfile(member)
            if fileobj is None:
                raise VendorError(f"cannot read {name} from {tarball.name}")
            with fileobj:
                contents[name] = fileobj.read()
    return contents


def fetch_files(version: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="vendor-htmx-") as tmp:
        tarball = npm_pack(version, Path(tmp))
        return read_members(tarball, [f.archive_path for f in VENDORED_FILES])


def verify(contents: dict[str, bytes]) -> None:
    errors: list[str] = []
    for f in VENDORED_FILES:
        actual = sha256_hex(contents[f.archive_path])
        if actual != f.sha256:
            errors.append(f"{f.archive_path}: expected sha256 {f.sha256}, got {actual}")
    if errors:
        details = "\n  ".join(errors)
        raise VendorError(f"sha256 mismatch:\n  {details}")


def render_readme() -> str:
    rows = "\n".join(
        f"| `{f.dest_name}` | `{f.archive_path.removeprefix('package/')}` "
        f"| {f.description} | `{f.sha256}` |"
        for f in VENDORED_FILES
    )
    return f"""# Vendored htmx

These files are copied verbatim from the npm package `{PACKAGE}`, version
`{PINNED_VERSION}`. Do not edit them by hand: regenerate them with

    python scripts/vendor_htmx.py

which runs `npm pack {PACKAGE}@{PINNED_VERSION}` and checks every file against the
sha256 pinned in that script (`python scripts/vendor_htmx.py --check` verifies the
files already here without network access).

| file | path in package | what | sha256 |
| --- | --- | --- | --- |
{rows}

Load order: `htmx.min.js` first, then the extension scripts. htmx 4 needs no
`hx-ext` attribute: an extension is active as soon as its script has run (unless
`htmx.config.extensions` is set, which then acts as a whitelist of names such as
`sse,upsert`).

## Licence

htmx is distributed under the {LICENSE_NAME} licence; the full text is in
`htmx-LICENSE.txt`.
"""


def write_files(contents: dict[str, bytes], vendor_dir: Path) -> None:
    vendor_dir.mkdir(parents=True, exist_ok=True)
    for f in VENDORED_FILES:
        (vendor_dir / f.dest_name).write_bytes(contents[f.archive_path])
    (vendor_dir / "README.md").write_text(render_readme(), encoding="utf-8")


def check_vendored(vendor_dir: Path) -> None:
    errors: list[str] = []
    for f in VENDORED_FILES:
        path = vendor_dir / f.dest_name
        if not path.is_file():
            errors.append(f"{path}: missing")
            continue
        actual = sha256_hex(path.read_bytes())
        if actual != f.sha256:
            errors.append(f"{path}: expected sha256 {f.sha256}, got {actual}")
    readme = vendor_dir / "README.md"
    if not readme.is_file() or readme.read_text(encoding="utf-8") != render_readme():
        errors.append(f"{readme}: missing or out of date")
    if errors:
        details = "\n  ".join(errors)
        raise VendorError(f"vendored files do not match the pins:\n  {details}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="verify the vendored files, fetch nothing"
    )
    parser.add_argument(
        "--print-hashes",
        action="store_true",
        help="fetch the package and print the sha256 of each file, write nothing",
    )
    parser.add_argument(
        "--package-version",
        default=PINNED_VERSION,
        help="version to fetch with --print-hashes (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    try:
        if args.check:
            check_vendored(VENDOR_DIR)
            print(f"OK: {len(VENDORED_FILES)} files match {PACKAGE}@{PINNED_VERSION}")
            return 0
        if args.print_hashes:
            contents = fetch_files(args.package_version)
            for f in VENDORED_FILES:
                print(f"{sha256_hex(contents[f.archive_path])}  {f.archive_path}")
            return 0
        if args.package_version != PINNED_VERSION:
            parser.error("--package-version is only allowed with --print-hashes")
        contents = fetch_files(PINNED_VERSION)
        verify(contents)
        write_files(contents, VENDOR_DIR)
    except VendorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in VENDORED_FILES:
        print(f"wrote {VENDOR_DIR / f.dest_name}")
    print(f"wrote {VENDOR_DIR / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
