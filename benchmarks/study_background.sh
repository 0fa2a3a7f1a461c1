#!/usr/bin/env bash
# Run (or continue) a study in the background from its own clone of the current commit.
#
#   benchmarks/study_background.sh mr-study          # or snli-study
#   tail -f ~/leebert-studies/mr-study-<commit>/study.log
#
# Ray starts every trial's process afresh, and each one imports the code it finds: a study run from
# the working tree would pick up later edits halfway through. So the study runs from a clone of HEAD
# (uncommitted changes are refused) with a virtual environment of its own, under $STUDY_HOME
# (default ~/leebert-studies, outside any work tree). Run the same command again after an
# interruption (a closed session, a reboot), from any later checkout: the preset's clone and its
# runs/ are found again and benchmarks/study.py continues where the study stopped, on the commit
# it started on (`--new` starts over from this checkout's HEAD). The study writes its section of
# this checkout's docs/results.md (--results) when it ends.
set -euo pipefail
preset=${1:?usage: benchmarks/study_background.sh mr-study|snli-study [--new]}
repo=$(cd "$(dirname "$0")/.." && pwd)
home=${STUDY_HOME:-$HOME/leebert-studies}
cd "$repo"
if pgrep -f "benchmarks/study.py --preset $preset" >/dev/null; then
    echo "error: a $preset study is already running (pgrep -fa 'benchmarks/study.py')" >&2
    exit 2
fi
# an unfinished study goes on from the commit it started on, whatever this checkout holds now
clone=$(ls -d "$home/$preset"-* 2>/dev/null | tail -n 1 || true)
if [ -z "$clone" ] || [ "${2:-}" = "--new" ]; then
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
        echo "error: uncommitted changes: a study runs from a commit; commit (or stash) them first" >&2
        exit 2
    fi
    commit=$(git rev-parse --short HEAD)
    clone="$home/$preset-$commit"
    mkdir -p "$home"
    [ -d "$clone/.git" ] || git clone --quiet "$repo" "$clone"
    git -C "$clone" checkout --quiet "$commit"
fi
if [ ! -x "$clone/.venv/bin/python" ]; then
    echo "installing the study's environment in $clone/.venv (about 3 minutes)"
    python3 -m venv "$clone/.venv"
    "$clone/.venv/bin/pip" install --quiet -e "$clone" >"$clone/install.log" 2>&1
fi
commit=$(git -C "$clone" rev-parse --short HEAD)
cd "$clone"
nohup .venv/bin/python benchmarks/study.py --preset "$preset" --results "$repo/docs/results.md" \
    >>"$clone/study.log" 2>&1 &
echo "study $preset running from $clone (commit $commit), pid $!; log: $clone/study.log"
