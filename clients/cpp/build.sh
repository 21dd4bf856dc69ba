#!/usr/bin/env bash
# Builds the C++ client: installs the Debian packages if missing (install_deps.sh), generates
# the stubs from <repo>/proto into build/gen, and compiles libvectorsearch_client.a and vs_e2e
# into build/. Incremental: a second run only re-checks (a few seconds at most).
# Environment: VS_CPP_JOBS (parallel compile jobs; default: the number of CPUs),
# VS_CPP_BUILD_TYPE (default Release; applies when build/ is first configured).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"

bash "$here/install_deps.sh"

# A build folder configured for another source path (the tree was moved or copied) cannot be
# reused by CMake: start it afresh.
if [ -f "$build/CMakeCache.txt" ] &&
    ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$here" "$build/CMakeCache.txt"; then
    echo "build.sh: $build was configured for another source folder; reconfiguring" >&2
    rm -rf "$build"
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE="${VS_CPP_BUILD_TYPE:-Release}"
fi
cmake --build "$build" --parallel "${VS_CPP_JOBS:-$(nproc)}"
echo "build.sh: built $build/vs_e2e" >&2
