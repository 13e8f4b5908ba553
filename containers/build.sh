#!/usr/bin/env bash
# Build an hpt-hpc image with Apptainer (or Singularity), labelled with this checkout's
# version and git commit. Run from anywhere; %files paths are relative to the repository.
#
#   bash containers/build.sh                       # GPU image: hpt-hpc.sif (NGC base)
#   bash containers/build.sh --cpu                 # CPU image: hpt-hpc-cpu.sif (no registry)
#   bash containers/build.sh --def FILE.def --out IMG.sif
#   bash containers/build.sh --fakeroot            # unprivileged build (needs subuid/subgid)
#   bash containers/build.sh --sandbox             # a writable folder instead of a .sif
#   bash containers/build.sh --remote              # Sylabs/Apptainer remote builder
#   bash containers/build.sh -- --notest --build-arg KEY=VALUE   # anything after -- goes
#                                                                 # to `apptainer build`
# Environment: APPTAINER_BIN (runtime to use), APPTAINER_CACHEDIR/APPTAINER_TMPDIR (put
# them on a big local disk: an NGC base unpacks to ~20 GB).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
def="$REPO/containers/hpt-hpc.def"
out=""
mode=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) def="$REPO/containers/hpt-hpc-cpu.def" ;;
        --gpu) def="$REPO/containers/hpt-hpc.def" ;;
        --def) def="$(realpath "$2")"; shift ;;
        --out) out="$2"; shift ;;
        --fakeroot|--sandbox|--remote) mode+=("$1") ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -r "$def" ] || { echo "build.sh: no definition file $def" >&2; exit 2; }
[ -n "$out" ] || out="$(basename "${def%.def}")$([[ " ${mode[*]-} " == *" --sandbox "* ]] || echo .sif)"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

runtime="${APPTAINER_BIN:-$(command -v apptainer || command -v singularity || true)}"
[ -n "$runtime" ] || { echo "build.sh: neither apptainer nor singularity is on PATH (module load apptainer?)" >&2; exit 127; }

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/hpt_hpc/__init__.py")"
commit="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi

echo "build.sh: $runtime build ${mode[*]-} $out <- $def (hpt-hpc $version, $commit)" >&2
cd "$REPO"
exec "$runtime" build ${mode[@]+"${mode[@]}"} --build-arg "VERSION=$version" \
    --build-arg "COMMIT=$commit" ${extra[@]+"${extra[@]}"} "$out" "$def"
