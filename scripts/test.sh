#!/usr/bin/env bash
# Run the lewm_ros test suite (lint included), setting up .venv first if needed.
#   scripts/test.sh                 default suite (fast; slow end-to-end runs excluded)
#   scripts/test.sh -m slow         only the slow end-to-end runs
#   scripts/test.sh test/test_x.py  any pytest arguments
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup.sh"
# shellcheck source=scripts/env.sh
. "$repo/scripts/env.sh"
# A DDS domain of this run's own, so parallel runs on one machine never see each other.
export ROS_DOMAIN_ID="${LEWM_TEST_DOMAIN_ID:-$(( 10 + $$ % 90 ))}"
cd "$repo"
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "scripts/test.sh: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit $rc
