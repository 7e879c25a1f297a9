#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine without ROS:
#   venv (.venv) -> pinned Python deps (CPU torch, ROS 2 Jazzy wheels, ...) -> repair the wheels'
#   CMake include paths -> build + install mu0_msgs (install/) -> editable install of mu0
#   -> write env.sh (source it to enter the environment).
# Each step is skipped when its inputs did not change, so a second run takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${MU0_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
STAMPS="$VENV/.mu0-stamps"
t0=$(date +%s)
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# --- 0. system libraries (pyrealsense2 needs libusb; MuJoCo offscreen needs EGL/OSMesa) --------
need_apt=()
libs=$(ldconfig -p)   # captured once: `ldconfig -p | grep -q` trips pipefail via SIGPIPE
for lib in libusb-1.0.so.0 libOSMesa.so libEGL.so.1; do
  grep -q "$lib" <<<"$libs" || need_apt+=("$lib")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system libraries (${need_apt[*]})"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
       libusb-1.0-0 libosmesa6 libegl1 libgl1 >/dev/null) || say "WARNING: apt-get failed; MuJoCo rendering / RealSense may not work"
  else
    say "WARNING: missing ${need_apt[*]}; install libusb-1.0-0 libosmesa6 libegl1 (apt)"
  fi
fi

# --- 1. venv -----------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv at $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools 2>&1 | grep -v "is ignored" || true
fi
PIP="$VENV/bin/pip"
# pip -q still prints one warning per missing local index directory; keep real errors only
pip_install() {
  local log; log=$(mktemp)
  if ! "$PIP" install -q "$@" >"$log" 2>&1; then grep -v "is ignored: it is neither" "$log"; rm -f "$log"; return 1; fi
  grep -v "is ignored: it is neither" "$log" | grep -vE "^\s*$|BuildBackendWarning|warnings.warn|!!|\*\*\*|Please be careful|name as your package|precedence during imports|with strategy" || true
  rm -f "$log"
}
VPY="$VENV/bin/python"

# --- 2. pinned Python dependencies -------------------------------------------------------------
# MuJoCo 3.3.0 goes first and alone (Meta-World pins it; installing another MuJoCo first leaves a
# mujoco-core 4.x behind that breaks `import mujoco`). torch==2.13.0 resolves to the local CPU wheel.
req_hash=$(hash_of requirements.txt)
if ! stamp_ok requirements "$req_hash"; then
  say "installing pinned Python dependencies (first run: a few minutes)"
  pip_install "$(grep -E '^mujoco==' requirements.txt)"
  pip_install "$(grep -E '^torch==' requirements.txt)"
  pip_install -r requirements.txt
  stamp_set requirements "$req_hash"
else
  say "Python dependencies up to date"
fi

# --- 3. repair the ROS wheels' CMake exports -----------------------------------------------------
# The wheels were built under /opt/python/cp311-cp311; their exported targets name include dirs
# there. Rewrite them to this interpreter's paths (idempotent: the old path no longer occurs).
py_inc=$("$VPY" -c 'import sysconfig;print(sysconfig.get_paths()["include"])')
np_inc=$("$VPY" -c 'import numpy;print(numpy.get_include())')
bad=$(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
if [ -n "$bad" ]; then
  say "repairing CMake include paths in $(echo "$bad" | wc -l) files"
  echo "$bad" | xargs sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_inc}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/core/include#${np_inc}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${py_inc}#g"
fi

# --- 4. build + install mu0_msgs -----------------------------------------------------------------
# Installed into the venv itself: it is a ROS prefix (share/ament_index, lib/), and the wheels'
# bootstrapper already puts <venv>/lib on LD_LIBRARY_PATH, so .venv/bin/python needs no env vars.
msgs_hash=$(hash_of mu0_msgs/CMakeLists.txt mu0_msgs/package.xml mu0_msgs/msg/*.msg mu0_msgs/srv/*.srv)
if ! stamp_ok mu0_msgs "$msgs_hash" || [ ! -d "$VENV/share/mu0_msgs" ]; then
  say "building mu0_msgs"
  rm -rf build/mu0_msgs; mkdir -p build
  (
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    cmake -S mu0_msgs -B build/mu0_msgs -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$VPY" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >build/mu0_msgs.log 2>&1 \
    && cmake --build build/mu0_msgs -j"$(nproc)" >>build/mu0_msgs.log 2>&1 \
    && cmake --install build/mu0_msgs >>build/mu0_msgs.log 2>&1
  ) || { tail -40 build/mu0_msgs.log; echo "mu0_msgs build failed (full log: build/mu0_msgs.log)"; exit 1; }
  stamp_set mu0_msgs "$msgs_hash"
else
  say "mu0_msgs up to date"
fi

# --- 5. the mu0 package itself (editable; console scripts) ---------------------------------------
pkg_hash=$(hash_of setup.py setup.cfg package.xml)
if ! stamp_ok mu0 "$pkg_hash"; then
  say "installing mu0 (editable)"
  pip_install --no-deps --no-build-isolation -e .
  stamp_set mu0 "$pkg_hash"
fi

# --- 6. environment file -------------------------------------------------------------------------
cat > env.sh <<ENV
# Generated by scripts/setup.sh. Enter the mu0 environment:  source env.sh
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export MUJOCO_GL="\${MUJOCO_GL:-egl}"
ENV
say "done in $(( $(date +%s) - t0 )) s — enter the environment with: source env.sh"
