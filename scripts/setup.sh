#!/usr/bin/env bash
# Set up lewm_ros on a machine without a ROS distro: a virtualenv in the repo (.venv) with genuine
# ROS 2 Python (rclpy, messages, Fast DDS) from the ros-kilted-* wheels, a CPU torch, MuJoCo and the
# offline tools, and this package in editable mode. Idempotent: a second run only checks and exits.
#
#   scripts/setup.sh            set up (or check) .venv
#   LEWM_VENV=/path scripts/setup.sh   use another virtualenv location
#   LEWM_TORCH="torch==2.13.0"  the torch requirement to install when none is present
#
# Source scripts/env.sh afterwards to use the environment in your shell.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LEWM_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
torch_req="${LEWM_TORCH:-torch==2.13.0}"

ros_pkgs=(
  ros-kilted-rclpy ros-kilted-rmw-fastrtps-cpp
  ros-kilted-std-msgs ros-kilted-std-srvs ros-kilted-sensor-msgs
  ros-kilted-geometry-msgs ros-kilted-diagnostic-msgs
)

# The stamp records what the environment was built from; unchanged inputs mean nothing to do.
stamp_file="$venv/.lewm-setup-stamp"
stamp="$(cat "$repo/setup.py" "$repo/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
   && "$venv/bin/python" -c 'import rclpy, torch, mujoco, h5py, rosbags, lewm_ros, training' 2>/dev/null; then
  log "environment up to date: $venv"
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
  log "need Python 3.10-3.12 (the Pythons of Humble, Jazzy and Kilted); $python is $("$python" -V 2>&1)"
  exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# torch first, so nothing later pulls the newest CUDA build in as a dependency.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  log "installing $torch_req"
  if "${pip[@]}" download -q --no-deps --no-index -d "$venv/.torch-probe" "$torch_req" >/dev/null 2>&1; then
    # pip's find-links holds a local build of it (a CPU wheel on this kind of machine): use that.
    "${pip[@]}" install -q "$torch_req"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" install -q "$torch_req"
  else
    # No GPU: take the CPU build instead of the default one with several GB of CUDA libraries.
    "${pip[@]}" install -q "$torch_req" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
  rm -rf "$venv/.torch-probe"
fi

log "installing ROS 2 Python (kilted wheels): ${ros_pkgs[*]}"
"${pip[@]}" install -q "${ros_pkgs[@]}" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

log "installing lewm_ros (editable) with the sim, train and test extras"
"${pip[@]}" install -q -e "$repo[sim,train,test]" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

# An editable install does not install data_files: link the share/ tree into the venv the way
# `colcon build --symlink-install` does, so the ament index finds lewm_ros, its launch files and config.
share="$venv/share/lewm_ros"
mkdir -p "$share" "$venv/share/ament_index/resource_index/packages"
ln -sfn "$repo/package.xml" "$share/package.xml"
ln -sfn "$repo/launch" "$share/launch"
ln -sfn "$repo/config" "$share/config"
ln -sfn "$repo/models" "$share/models"
ln -sfn "$repo/resource/lewm_ros" "$venv/share/ament_index/resource_index/packages/lewm_ros"

"$venv/bin/python" -c 'import rclpy, torch, mujoco, h5py, rosbags, lewm_ros, training' \
  || { log "set-up finished but imports fail; see the messages above"; exit 1; }
echo "$stamp" > "$stamp_file"
log "done: $venv (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
