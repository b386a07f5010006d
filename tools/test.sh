#!/usr/bin/env bash
# The README's test command: install, check that notebooks and sccvae/ agree, build-check the docs, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0              # the CPU wheel; a bare `torch` would pull a multi-GB CUDA build
python -m pip install -q -e ".[dev]"
# the versions this run resolved, in the log, so a later red run can be diffed against the last green one
echo "== python $(python -c 'import sys; print(sys.version.split()[0])'); resolved packages:"
python -m pip freeze --exclude-editable | tr '\n' ' '; echo
nbdev-export
nbdev-clean
if [[ -n "$(git status --porcelain -uno 2>/dev/null)" ]]; then
  git status --short -uno; git --no-pager diff --stat
  echo "FAIL: notebooks and sccvae/ are out of sync or unclean: run 'nbdev-export && nbdev-clean' and commit." >&2
  exit 1
fi
python -c "from nbdev.serve import proc_nbs; proc_nbs()" > /dev/null   # docs smoke test (no quarto needed)
python -m pytest                                                         # last: its closing line is what CI reads
