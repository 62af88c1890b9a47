#!/bin/sh
# Promotion benchmark: `moonops promote --yes` versus the documented git CLI flow
#   git clone DST; git remote add src SRC; git pull -X theirs --allow-unrelated-histories src main; git push
# on identical copies of a generated target (FILES files, COMMITS commits on each side).
# Usage: bench/promote/run.sh [MOONOPS_BIN] [FILES] [COMMITS]
set -eu
BIN=${1:-build/moonops}
FILES=${2:-10000}
COMMITS=${3:-1000}
HERE=$(cd "$(dirname "$0")" && pwd)
case $BIN in /*) ;; *) BIN=$(pwd)/$BIN ;; esac

W=$(mktemp -d /tmp/moonops-bench-promote.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GIT_CONFIG_NOSYSTEM=1 HOME="$W/home"
mkdir -p "$HOME"
git config --global user.name "Bench" && git config --global user.email bench@example.com
git config --global init.defaultBranch main

now() { date +%s.%N; }
t=$(now)
for side in source target; do
  git init -q --bare "$W/$side.git"
  "$BIN" lua "$HERE/generate.lua" "$side" "$FILES" "$COMMITS" | git -C "$W/$side.git" fast-import --done --quiet
done
cp -a "$W/target.git" "$W/target-git.git"
cp -a "$W/target.git" "$W/target-moonops.git"
gen=$(echo "$(now) - $t" | bc)

# the manual flow
t=$(now)
(
  cd "$W"
  git clone -q target-git.git manual
  cd manual
  git remote add src "$W/source.git"
  git -c pull.rebase=false pull -q --no-edit -X theirs --allow-unrelated-histories src main
  git push -q origin main
)
cli=$(echo "$(now) - $t" | bc)

# moonops (first run: clones the working copy)
mkdir -p "$W/cwd"
t=$(now)
(cd "$W/cwd" && "$BIN" --quiet promote --from "$W/source.git" --to "$W/target-moonops.git" --yes >/dev/null)
mo=$(echo "$(now) - $t" | bc)

tree_cli=$(git -C "$W/target-git.git" rev-parse 'main^{tree}')
tree_mo=$(git -C "$W/target-moonops.git" rev-parse 'main^{tree}')
par_cli=$(git -C "$W/target-git.git" rev-parse 'main^@' | tr '\n' ' ')
par_mo=$(git -C "$W/target-moonops.git" rev-parse 'main^@' | tr '\n' ' ')
same=yes
[ "$tree_cli" = "$tree_mo" ] && [ "$par_cli" = "$par_mo" ] || same=NO

printf 'promote: %s files, %s commits on each side (generated in %.2f s)\n' "$FILES" "$COMMITS" "$gen"
printf '| %-44s | %9s |\n' "flow" "wall (s)"
printf '| %-44s | %9.3f |\n' "git clone + remote add + pull -X theirs + push" "$cli"
printf '| %-44s | %9.3f |\n' "moonops promote --yes" "$mo"
printf 'ratio moonops/git: %.2f   same tree and parents: %s\n' "$(echo "$mo / $cli" | bc -l)" "$same"
[ "$same" = yes ]
