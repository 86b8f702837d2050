#!/usr/bin/env bash
# The main job: MuJoCo sim-in-the-loop with the LeWM planner over real ROS 2 topics.
# Sets up .venv if needed, then runs `lewm demo` (see `lewm demo --help` for the options).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup.sh"
# shellcheck source=scripts/env.sh
. "$repo/scripts/env.sh"
cd "$repo"
exec lewm demo "$@"
