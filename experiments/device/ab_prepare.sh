#!/usr/bin/env bash
# Writes .ab/old.tar.gz and .ab/old.sha: the sources of an older commit (default e50204f,
# the last tree before the masked-value and head-dim 64/96 kernel changes), which
# check_kernels.sh builds beside this tree and times against it on a lent GPU. .ab/ is
# ignored by git: name it among the paths the GPU call carries.
# Usage: experiments/device/ab_prepare.sh [commit]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
commit=${1:-e50204f}
mkdir -p "$root/.ab"
git -C "$root" archive --format=tar.gz -o "$root/.ab/old.tar.gz" "$commit" CMakeLists.txt cmake cuda src python pyproject.toml
git -C "$root" rev-parse --short "$commit" >"$root/.ab/old.sha"
echo "wrote .ab/old.tar.gz ($(cat "$root/.ab/old.sha"), $(wc -c <"$root/.ab/old.tar.gz") bytes)"
