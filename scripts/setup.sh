#!/usr/bin/env bash
# Set up match_node's development environment and build its two ROS 2 packages.
#
#   scripts/setup.sh          # safe to run again at any time; fast when nothing changed
#   source scripts/env.sh     # afterwards, in every shell / script that needs the environment
#
# What it does:
#   1. creates the virtual environment <repo>/.venv;
#   2. installs requirements.txt (+ requirements-ros.txt) into it, only when they changed;
#   3. builds match_node_msgs and match_node with colcon into <repo>/install.
#
# Two modes:
#   * "wheels" (default): no ROS 2 on the machine. ROS 2 Kilted comes from the `ros-*` wheels
#     on PyPI, installed into the venv; the venv is the ament prefix.
#   * "distro": a ROS 2 distribution is already sourced (ROS_DISTRO set and rclpy importable).
#     The venv then sees the system's packages (--system-site-packages), the `ros-*` wheels are
#     skipped, and the packages are built against the distribution's ament.
#
# Environment variables:
#   PYTHON   interpreter that creates the venv (default: python3). In distro mode it must be
#            the interpreter the distribution was built for (the python3 that imports rclpy).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.match_node_setup_stamp"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

T0=$SECONDS

# Run from a shell where this (or another) venv is active, `python3` would be the venv's
# interpreter, which may be about to be deleted: take that venv off PATH first.
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -x -F "$VIRTUAL_ENV/bin" | paste -sd:)"
  unset VIRTUAL_ENV
fi

# --- Mode ----------------------------------------------------------------------------------
if [[ -n "${ROS_DISTRO:-}" ]] && "$PYTHON" -c 'import rclpy' >/dev/null 2>&1; then
  MODE="distro-$ROS_DISTRO"
  log "ROS 2 '$ROS_DISTRO' is sourced: building against it"
else
  MODE="wheels"
  if [[ -n "${ROS_DISTRO:-}" ]]; then
    log "WARNING: ROS_DISTRO=$ROS_DISTRO is set but '$PYTHON' cannot import rclpy: ignoring it"
  fi
  log "no ROS 2 distribution sourced: using ROS 2 wheels from PyPI"
fi

# --- System prerequisites -----------------------------------------------------------------
# Nothing here is installed with apt: say what is missing and stop.
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found (set PYTHON=/path/to/python3)"
command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
  die "C/C++ compiler not found (Debian: apt-get install build-essential)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$PYTHON is older than 3.10"
# The generated message bindings are a C extension: they need Python.h.
PY_INCLUDE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[[ -f "$PY_INCLUDE/Python.h" ]] \
  || die "$PY_INCLUDE/Python.h missing (Debian: apt-get install python3-dev)"
# Distro mode keeps the distribution's numpy (see below): note its version before the venv
# is activated.
SYS_NUMPY=""
if [[ $MODE == distro-* ]]; then
  SYS_NUMPY="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
fi

# --- Virtual environment ------------------------------------------------------------------
# A venv made for the other mode is unusable (system site-packages on/off, other ament), and
# so is the CMake cache of a build made against the other ament: start both afresh. The
# stamp's first line records the mode (and distribution) the venv was set up for.
want_system_site=false
[[ $MODE == distro-* ]] && want_system_site=true
if [[ -f "$VENV/pyvenv.cfg" ]] && { [[ -f "$STAMP" && "$(head -n1 "$STAMP")" != "mode=$MODE" ]] \
    || ! grep -q -x "include-system-site-packages = $want_system_site" "$VENV/pyvenv.cfg"; }; then
  log "mode changed to $MODE: removing .venv build install"
  rm -rf "$VENV" build install
fi
# A venv whose interpreter is gone (e.g. Python upgraded or moved) is rebuilt as well.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
  log "broken .venv: recreating"
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating .venv"
  venv_args=()
  [[ $want_system_site == true ]] && venv_args+=(--system-site-packages)
  "$PYTHON" -m venv "${venv_args[@]}" "$VENV" \
    || die "could not create the venv (Debian: apt-get install python3-venv)"
fi
# Activate for the rest of this script. activate reads unset variables, hence set +u.
set +u
# shellcheck disable=SC1091
source "$VENV/bin/activate"
set -u

# --- Python packages -----------------------------------------------------------------------
# The exact requirement set for this mode is written to one file; its hash (plus the mode
# and the interpreter version) is kept in the stamp, and pip only runs when that changes.
REQ_ALL="$VENV/.match_node_requirements.txt"
{
  if [[ $MODE == wheels ]]; then
    cat requirements-ros.txt requirements.txt
  else
    # Distro mode: the distribution provides ROS itself, so drop the ros-* wheels; keep its
    # numpy too (its message modules are compiled against it and break under another major
    # version): our numpy pin is replaced by the version already installed.
    grep -v -E '^[[:space:]]*ros-' requirements-ros.txt
    grep -v -E '^[[:space:]]*numpy[[:space:]]*==' requirements.txt
    if [[ -n "$SYS_NUMPY" ]]; then
      printf '# kept from the ROS distribution\nnumpy==%s\n' "$SYS_NUMPY"
    else
      grep -E '^[[:space:]]*numpy[[:space:]]*==' requirements.txt
    fi
  fi
} >"$REQ_ALL.new"
mv "$REQ_ALL.new" "$REQ_ALL"
REQ_HASH="$( { sha256sum "$REQ_ALL" requirements-nodeps.txt; python -VV; } | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(sed -n 2p "$STAMP")" == "requirements=$REQ_HASH" ]]; then
  log "Python packages up to date"
else
  log "installing Python packages (requirements changed; a fresh venv takes a few minutes)"
  # One pip call for everything, so that the resolver sees all pins at once.
  python -m pip install --quiet -r "$REQ_ALL"
  # Packages whose declared dependencies clash with ours (see the file).
  python -m pip install --quiet --no-deps -r requirements-nodeps.txt
  printf 'mode=%s\nrequirements=%s\n' "$MODE" "$REQ_HASH" >"$STAMP"
fi

# --- Fix the wheels' CMake exports (wheels mode) -------------------------------------------
# The ros-* wheels were built under /opt/python/cpXY-cpXY (manylinux), and the CMake target
# files they export still name that interpreter's include dir and numpy include dir. CMake refuses
# imported targets with non-existent include paths, so point them at this venv's.
# Idempotent (after the first pass the old paths no longer occur) and cheap: runs every time,
# so that wheels reinstalled by pip are fixed too.
if [[ $MODE == wheels ]]; then
  python - "$VENV" <<'PY'
import pathlib, sys, sysconfig
import numpy

venv = pathlib.Path(sys.argv[1])
tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
pyver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
old_root = f"/opt/python/{tag}-{tag}"
replacements = {
    f"{old_root}/lib/{pyver}/site-packages/numpy/_core/include": numpy.get_include(),
    f"{old_root}/include/{pyver}": sysconfig.get_paths()["include"],
}
changed = 0
# CMake package files live in share/ (and lib/cmake/); not the rest of lib/, which holds
# the whole of site-packages.
for sub in ("share", "lib/cmake"):
    for path in (venv / sub).rglob("*.cmake"):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if old_root not in text:
            continue
        new = text
        for old, repl in replacements.items():
            new = new.replace(old, repl)
        if new != text:
            path.write_text(new)
            changed += 1
if changed:
    print(f"[setup] fixed builder paths in {changed} CMake file(s)")
PY
fi

# --- Build ---------------------------------------------------------------------------------
# --base-paths: only our two packages. In wheels mode the venv's share/ holds package.xml
#   files of every wheel, which colcon must not crawl.
# --symlink-install: match_node's Python sources are linked, not copied, into install/, so
#   editing them needs no rebuild. (Must stay on: colcon refuses to switch an existing build
#   between symlinked and copied installs.)
# colcon is run on the venv's interpreter explicitly: it installs match_node's entry points
#   with the interpreter it runs on (sys.executable). In distro mode a plain `colcon` could be
#   the distribution's /usr/bin/colcon on /usr/bin/python3, whose scripts cannot see the venv.
cmake_args=(-DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF)
if [[ $MODE == wheels ]]; then
  # The ament index of the wheels lives in <venv>/share. (colcon then warns that this path
  # "doesn't contain any 'local_setup.*' files": expected, the venv is not a colcon prefix.)
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  cmake_args+=(-DCMAKE_PREFIX_PATH="$VENV")
fi
log "building match_node_msgs and match_node with colcon"
python -c 'import sys; from colcon_core.command import main; sys.exit(main())' build \
  --base-paths match_node_msgs match_node \
  --symlink-install \
  --cmake-args "${cmake_args[@]}"

log "done in $((SECONDS - T0)) s. Use: source scripts/env.sh"
