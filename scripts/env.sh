# Source this file (`. scripts/env.sh`) to use the lewm_ros virtualenv in a shell.
# It keeps DDS discovery on this machine and makes the ament index see the venv's share/.
_lewm_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_lewm_venv="${LEWM_VENV:-$_lewm_repo/.venv}"
export VIRTUAL_ENV="$_lewm_venv"
export PATH="$_lewm_venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_lewm_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# Loopback-only DDS: Jazzy and newer read the first, Humble the second.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOCALHOST_ONLY=1
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# MuJoCo renders headless through EGL.
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
unset _lewm_repo _lewm_venv
