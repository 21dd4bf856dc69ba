#!/usr/bin/env bash
# Installs the Debian packages the C++ client needs to build, only when some are missing.
# Idempotent and fast when everything is present (one `dpkg -s` call, no apt-get).
set -euo pipefail

PACKAGES=(
    g++
    make
    cmake
    pkg-config
    protobuf-compiler       # protoc
    protobuf-compiler-grpc  # grpc_cpp_plugin
    libprotobuf-dev
    libgrpc++-dev
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # `dpkg -s` exits 0 for a package that is known but not installed (e.g. removed, config
    # files left), so check the status line as well.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "install_deps.sh: installing ${missing[*]}" >&2
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install_deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
