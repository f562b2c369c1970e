#!/usr/bin/env bash
# Writes .ab/NAME.tar.gz and .ab/NAME.sha (NAME default 'old'): the sources of a commit
# (default e50204f, the last tree before the masked-value and head-dim 64/96 kernel
# changes), which check_kernels.sh builds beside this tree and times against it on a lent
# GPU: .ab/old.tar.gz is the baseline; other names are further builds, given to it as
# AB_EXTRA="NAME=.ab/NAME.tar.gz ...". .ab/ is ignored by git: name it among the paths the
# GPU call carries.
# Usage: experiments/device/ab_prepare.sh [commit [name]]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
commit=${1:-e50204f}
name=${2:-old}
[[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "name '$name': letters, digits, '_', '.', '-' only" >&2; exit 2; }
mkdir -p "$root/.ab"
git -C "$root" archive --format=tar.gz -o "$root/.ab/$name.tar.gz" "$commit" CMakeLists.txt cmake cuda src python pyproject.toml
git -C "$root" rev-parse --short "$commit" >"$root/.ab/$name.sha"
echo "wrote .ab/$name.tar.gz ($(cat "$root/.ab/$name.sha"), $(wc -c <"$root/.ab/$name.tar.gz") bytes)"
