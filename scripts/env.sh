# shellcheck shell=bash
# Environment of match_node, for bash. Source it, do not run it:
#
#   source scripts/env.sh
#
# after scripts/setup.sh has run once. It
#   * sources the ROS 2 distribution if setup.sh built against one and none is sourced yet;
#   * activates <repo>/.venv;
#   * in wheels mode (ROS 2 from PyPI) puts the venv on AMENT_PREFIX_PATH, where the wheels'
#     ament index lives;
#   * overlays the colcon workspace <repo>/install (match_node_msgs, match_node).
# Safe to source more than once, and from scripts running under `set -euo pipefail`.

# Relax the caller's shell options while sourcing: venv's activate and colcon's setup
# scripts read unset variables (set -u) and some of their tests return non-zero (set -e).
# The caller's options are restored at the end. ($- is read directly: inside $(...) bash
# would report errexit as off.)
_mn_opts="$-"
set +eu

_mn_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_mn_venv="$_mn_root/.venv"
_mn_ok=1

if [[ ! -x "$_mn_venv/bin/python" ]]; then
  echo "[env] $_mn_venv missing: run scripts/setup.sh first" >&2
  _mn_ok=0
fi

if [[ $_mn_ok == 1 ]]; then
  # First line of the stamp written by setup.sh: mode=wheels or mode=distro-<name>.
  _mn_mode="$(head -n1 "$_mn_venv/.match_node_setup_stamp" 2>/dev/null)"
  _mn_mode="${_mn_mode#mode=}"

  if [[ $_mn_mode == distro-* ]]; then
    _mn_distro="${_mn_mode#distro-}"
    if [[ -z "${ROS_DISTRO:-}" ]]; then
      if [[ -f "/opt/ros/$_mn_distro/setup.bash" ]]; then
        # shellcheck disable=SC1090
        source "/opt/ros/$_mn_distro/setup.bash"
      else
        echo "[env] built against ROS 2 '$_mn_distro': source its setup.bash first" >&2
        _mn_ok=0
      fi
    elif [[ "$ROS_DISTRO" != "$_mn_distro" ]]; then
      echo "[env] warning: built against ROS 2 '$_mn_distro' but '$ROS_DISTRO' is sourced" >&2
    fi
  fi
fi

if [[ $_mn_ok == 1 ]]; then
  # shellcheck disable=SC1091
  source "$_mn_venv/bin/activate"

  if [[ $_mn_mode == wheels ]]; then
    case ":${AMENT_PREFIX_PATH:-}:" in
      *":$_mn_venv:"*) ;;
      *) export AMENT_PREFIX_PATH="$_mn_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
    esac
  fi

  if [[ -f "$_mn_root/install/local_setup.bash" ]]; then
    # shellcheck disable=SC1091
    source "$_mn_root/install/local_setup.bash"
  else
    echo "[env] $_mn_root/install missing: run scripts/setup.sh" >&2
    _mn_ok=0
  fi
fi

# Camera-sized images sent best-effort between processes are lost with Fast DDS's default
# transports (fragments overflow the UDP receive buffer): every process started from this
# environment uses the project's profile unless one is already chosen.
if [[ $_mn_ok == 1 && -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ]]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$_mn_root/match_node/config/fastdds_large_images.xml"
fi

[[ $_mn_opts == *u* ]] && set -u
[[ $_mn_opts == *e* ]] && set -e
if [[ $_mn_ok == 1 ]]; then
  unset _mn_opts _mn_root _mn_venv _mn_mode _mn_distro _mn_ok
  true
else
  unset _mn_opts _mn_root _mn_venv _mn_mode _mn_distro _mn_ok
  false
fi
