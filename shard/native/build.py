"""Builds ``shard/_vsnative<EXT_SUFFIX>`` from ``shard/native/vsnative.cpp`` and hnswlib 0.8.0's headers.

Usage: ``python -m shard.native.build [--force] [--quiet]`` (``scripts/setup.sh`` runs it).

1. The hnswlib 0.8.0 sdist: ``$VS_HNSWLIB_SDIST`` if set (offline builds), else the cached copy,
   else ``pip download --no-deps --no-binary :all: hnswlib==0.8.0`` into the cache directory
   (``$VS_NATIVE_CACHE``, else ``$VS_CACHE_DIR/native``, else ``$XDG_CACHE_HOME/vectorsearch/native``,
   else ``~/.cache/vectorsearch/native``). Its sha256 must equal :data:`HNSWLIB_SHA256` (the
   digest PyPI publishes); only the ``hnswlib/*.h`` members are extracted. No third-party code is
   kept in the repository.
2. Flags as hnswlib's own setup.py: ``-O3 -march=native`` (dropped when ``VS_NATIVE_PORTABLE=1``,
   like ``HNSWLIB_NO_NATIVE``, or when the compiler lacks it), ``-std=c++17 -fvisibility=hidden
   -shared -fPIC``; no OpenMP (threads are ``std::thread``). Compiler: ``$CXX``, else ``c++``.
3. Skipped when ``shard/_vsnative.stamp`` holds the hash of the source, the headers, the flags,
   the compiler's version, pybind11's version and the extension suffix, and the module exists.
4. The module is compiled to a temporary name, imported in a subprocess as a smoke test, then
   renamed into place (a running process keeps the file it mapped).

Exit status 0 when the module is built or up to date, 1 with a message on stderr otherwise; the
shard then runs on hnswlib's Python bindings (``shard/hnsw.py``), so callers may treat a failure
as a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

HNSWLIB_VERSION = "0.8.0"
HNSWLIB_SDIST = f"hnswlib-{HNSWLIB_VERSION}.tar.gz"
# sha256 of hnswlib-0.8.0.tar.gz as published on https://pypi.org/simple/hnswlib/
HNSWLIB_SHA256 = "cb6d037eedebb34a7134e7dc78966441dfd04c9cf5ee93911be911ced951c44c"
HEADERS = (
    "bruteforce.h",
    "hnswalg.h",
    "hnswlib.h",
    "space_ip.h",
    "space_l2.h",
    "stop_condition.h",
    "visited_list_pool.h",
)

NATIVE_DIR = Path(__file__).resolve().parent
SOURCE = NATIVE_DIR / "vsnative.cpp"
SHARD_DIR = NATIVE_DIR.parent
STAMP = SHARD_DIR / "_vsnative.stamp"
COMPILE_TIMEOUT_S = 600
DOWNLOAD_TIMEOUT_S = 300


class BuildError(RuntimeError):
    """The module could not be built; the message says why and what to do."""


def cache_dir() -> Path:
    """Where the sdist and its headers are kept (see the module docstring)."""
    if os.environ.get("VS_NATIVE_CACHE"):
        return Path(os.environ["VS_NATIVE_CACHE"])
    if os.environ.get("VS_CACHE_DIR"):
        return Path(os.environ["VS_CACHE_DIR"]) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorsearch" / "native"


def output_path() -> Path:
    """``shard/_vsnative<EXT_SUFFIX>``, e.g. ``_vsnative.cpython-311-x86_64-linux-gnu.so``."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return SHARD_DIR / f"_vsnative{suffix}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"shard.native.build: {message}", file=sys.stderr)


def fetch_sdist(cache: Path, quiet: bool) -> Path:
    """The verified hnswlib 0.8.0 sdist: from ``$VS_HNSWLIB_SDIST``, the cache, or PyPI via pip."""
    given = os.environ.get("VS_HNSWLIB_SDIST")
    if given:
        path = Path(given)
        if not path.is_file():
            raise BuildError(f"VS_HNSWLIB_SDIST={given} is not a file")
        if sha256_file(path) != HNSWLIB_SHA256:
            raise BuildError(f"VS_HNSWLIB_SDIST={given}: sha256 is not the pinned {HNSWLIB_SHA256}")
        return path
    target = cache / HNSWLIB_SDIST
    if target.is_file() and sha256_file(target) == HNSWLIB_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {HNSWLIB_SDIST} from the package index (pip download)", False)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check"]
    # pip prepares the sdist's metadata, which runs hnswlib's setup.py (it imports numpy and
    # pybind11). Without build isolation that uses this environment's, which the project
    # depends on; with isolation, --no-binary :all: would also build numpy itself from source.
    attempts = [
        [*base, "--no-build-isolation"],
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "hnswlib", "--disable-pip-version-check"],
    ]
    errors = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for command in attempts:
            command = [*command, f"hnswlib=={HNSWLIB_VERSION}", "-d", tmp, "--quiet"]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{shlex.join(command)}: {exc}")
                continue
            downloaded = Path(tmp) / HNSWLIB_SDIST
            if done.returncode == 0 and downloaded.is_file():
                digest = sha256_file(downloaded)
                if digest != HNSWLIB_SHA256:
                    raise BuildError(f"{HNSWLIB_SDIST} from the index has sha256 {digest}, pinned {HNSWLIB_SHA256}")
                os.replace(downloaded, target)
                return target
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            errors.append(f"{shlex.join(command)}: exit {done.returncode}: {' | '.join(tail)}")
    raise BuildError("could not download the hnswlib sdist:\n  " + "\n  ".join(errors))


def extract_headers(sdist: Path, cache: Path) -> Path:
    """Extracts ``hnswlib/*.h`` of the sdist into ``cache/hnswlib-0.8.0-<sha>/``; the include dir."""
    include = cache / f"hnswlib-{HNSWLIB_VERSION}-{HNSWLIB_SHA256[:12]}" / "include"
    if all((include / name).is_file() for name in HEADERS):
        return include
    prefix = f"hnswlib-{HNSWLIB_VERSION}/hnswlib/"
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix="headers-"))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix(prefix)
                if not member.name.startswith(prefix) or name not in HEADERS or not member.isfile():
                    continue
                handle = archive.extractfile(member)
                assert handle is not None
                (tmp / name).write_bytes(handle.read())
        missing = [name for name in HEADERS if not (tmp / name).is_file()]
        if missing:
            raise BuildError(f"{sdist} lacks {', '.join(missing)}")
        include.parent.mkdir(parents=True, exist_ok=True)
        if include.exists():
            shutil.rmtree(include)
        os.replace(tmp, include)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return include


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX") or "c++")


def compiler_version(cxx: list[str]) -> str:
    try:
        done = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(
            f"no C++ compiler ({shlex.join(cxx)}: {exc}); install g++ (build-essential) or set CXX"
        ) from exc
    if done.returncode != 0:
        raise BuildError(f"{shlex.join(cxx)} --version failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"


def has_flag(cxx: list[str], flag: str) -> bool:
    """Whether the compiler accepts ``flag`` (hnswlib's setup.py checks -march=native the same way)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int main() { return 0; }\n")
        try:
            done = subprocess.run(
                [*cxx, flag, "-c", str(src), "-o", str(Path(tmp) / "probe.o")], capture_output=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


def flags(cxx: list[str], quiet: bool) -> list[str]:
    """Compile flags, without include paths (those are hashed as header contents)."""
    out = ["-O3"]
    if os.environ.get("VS_NATIVE_PORTABLE", "") in ("", "0"):
        if has_flag(cxx, "-march=native"):
            out.append("-march=native")
        else:
            _log("the compiler does not accept -march=native: building without it", quiet)
    out += ["-std=c++17", "-fvisibility=hidden", "-shared", "-fPIC", "-pthread"]
    out.append(f'-DVS_HNSWLIB_VERSION="{HNSWLIB_VERSION}"')
    if sys.platform == "darwin":
        out += ["-undefined", "dynamic_lookup"]
    return out


def cpu_model() -> str:
    """The first CPU's model name and feature flags (Linux), else the machine type."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags") and key not in found:
                    found[key] = line.strip()
    except OSError:
        pass
    return "\n".join(found.values()) or platform.machine()


def stamp_of(include: Path, build_flags: list[str], compiler_line: str) -> str:
    import pybind11

    digest = hashlib.sha256()
    parts: list[bytes] = [SOURCE.read_bytes()]
    parts += [name.encode() + b"\0" + (include / name).read_bytes() for name in HEADERS]
    parts += [
        "\0".join(build_flags).encode(),
        compiler_line.encode(),
        pybind11.__version__.encode(),
        str(sysconfig.get_config_var("EXT_SUFFIX")).encode(),
    ]
    if "-march=native" in build_flags:  # the code depends on this CPU, not only on the flags
        parts.append(cpu_model().encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def smoke_test(module_file: Path) -> None:
    """Loads ``module_file`` in a fresh interpreter and runs a tiny search with it."""
    code = (
        "import importlib.machinery, importlib.util, sys, numpy as np\n"
        "loader = importlib.machinery.ExtensionFileLoader('shard._vsnative', sys.argv[1])\n"
        "spec = importlib.util.spec_from_loader('shard._vsnative', loader)\n"
        "mod = importlib.util.module_from_spec(spec); loader.exec_module(mod)\n"
        "index = mod.Index('l2', 4); index.init_index(8)\n"
        "index.add_items(np.eye(4, dtype=np.float32), np.arange(4))\n"
        "labels, _ = index.knn_query(np.eye(4, dtype=np.float32)[:1], k=1)\n"
        "assert int(labels[0, 0]) == 0, labels\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(module_file)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BuildError(f"the built module does not load or search: {done.stderr.strip()[-2000:]}")


def build(force: bool = False, quiet: bool = False) -> Path:
    """Builds the module if it is missing or out of date; returns its path. Raises BuildError."""
    try:
        import pybind11
    except ImportError as exc:
        raise BuildError("pybind11 is not installed in this environment (pip install 'pybind11>=2.12')") from exc
    if not SOURCE.is_file():
        raise BuildError(f"{SOURCE} is missing")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    include = extract_headers(fetch_sdist(cache, quiet), cache)
    cxx = compiler()
    compiler_line = compiler_version(cxx)
    build_flags = flags(cxx, quiet)
    stamp = stamp_of(include, build_flags, compiler_line)
    target = output_path()
    if not force and target.is_file() and STAMP.is_file() and STAMP.read_text().strip() == stamp:
        _log(f"{target.name} is up to date", quiet)
        return target
    flag_text = " ".join(build_flags)
    command = [
        *cxx,
        *build_flags,
        f'-DVS_BUILD_FLAGS="{flag_text.replace(chr(34), "")}"',
        "-I",
        str(include),
        "-I",
        pybind11.get_include(),
        "-I",
        sysconfig.get_paths()["include"],
        str(SOURCE),
    ]
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command += ["-o", str(tmp)]
    _log(f"compiling {SOURCE.name} with hnswlib {HNSWLIB_VERSION} ({compiler_line}; {flag_text})", False)
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"the compiler ran past {COMPILE_TIMEOUT_S} s") from exc
        except OSError as exc:
            raise BuildError(f"cannot run the compiler: {exc}") from exc
        if done.returncode != 0:
            raise BuildError(f"compilation failed ({shlex.join(command)}):\n{done.stderr.strip()[-4000:]}")
        smoke_test(tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, BuildError):
            # A module built from other sources or flags must not stay importable: the fallback is safer.
            STAMP.unlink(missing_ok=True)
            if target.exists():
                target.unlink()
                _log(f"removed the out-of-date {target.name}", False)
        raise
    STAMP.unlink(missing_ok=True)
    os.replace(tmp, target)
    STAMP.write_text(stamp + "\n")
    _log(f"built {target}", quiet)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shard.native.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    try:
        build(force=args.force, quiet=args.quiet)
    except BuildError as exc:
        print(
            f"shard.native.build: shard._vsnative NOT built: {exc}\n"
            "shard.native.build: the shard falls back to hnswlib's Python bindings "
            "(filtered search without the native allowed-set filter).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
