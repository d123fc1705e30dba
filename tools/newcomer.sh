#!/usr/bin/env bash
# The newcomer's path (issue 13), recorded: a fresh clone and a fresh virtual environment, the
# README's two commands, a dataset that is not on disk, the first 30 s of an image run, sampling,
# the report, and then `git status --porcelain`, which must print nothing.
#   tools/newcomer.sh REPO WORKDIR > docs/newcomer.md
# The venv sees the system's packages (--system-site-packages) so torch is not downloaded again;
# the README's install section says how to get a CPU-only torch on a machine without one.
set -uo pipefail
repo=$1 work=$2
rm -rf "$work" && mkdir -p "$work"
step() { printf '\n```console\n$ %s\n' "$1"; local t0=$SECONDS; bash -c "$1" 2>&1 | sed -e 's/\r/\n/g'; local rc=${PIPESTATUS[0]}; printf '```\n(exit %s, %s s)\n' "$rc" "$((SECONDS - t0))"; }
echo "# A newcomer's first half hour, recorded"
echo
echo "Recorded by \`tools/newcomer.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, CPU flags:" \
     "$(grep -o -m1 'avx512_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '), no GPU, no network;" \
     "every command as typed, its whole output and its wall time."
cd "$work"
step "git clone --quiet $repo lvm && cd lvm && git log --oneline -1"
cd lvm
python -m venv --system-site-packages ../venv >/dev/null && source ../venv/bin/activate
echo; echo '## The two README commands'
step 'pip install --quiet -e ".[test]" && lvm run vae2d --dataset gaussians-a1'
step 'pytest --nbval 2>&1 | tail -15'
echo; echo '## Then'
step 'time lvm --help | head -3'
step 'lvm run vqvae --dataset svhn'
step 'timeout 30 lvm run vae --dataset shapes'
step 'lvm sample --checkpoint runs/vae2d/gaussians-a1/checkpoint.pt'
step 'lvm report | head -8'
step 'git status --porcelain; echo "(git status printed $(git status --porcelain | wc -l) lines)"'
