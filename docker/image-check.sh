#!/usr/bin/env bash
# make image-check: build the step image without a daemon and run a checkpoint-wipe stage inside it,
# as its non-root user, with a read-only root filesystem and a tmpfs /tmp.
#
#   1. tools: buildah, debootstrap, bubblewrap (Debian packages; installed when missing, as root)
#   2. base: Debian bookworm with python3 and venv, from debootstrap (cached in build/image/rootfs)
#   3. wheelhouse: this package and its dependencies as wheels, pinned to the versions in .venv
#   4. buildah build of docker/Dockerfile (vfs storage, chroot isolation: no daemon, no overlay)
#   5. the four phases, each a fresh `mlchaos run --phase` in the image under bwrap, then the checks
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT/build/image"
PY="$ROOT/.venv/bin/python"
IMAGE=localhost/mlchaos-steps:check
BASE=localhost/mlchaos-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDAH=(buildah --storage-driver vfs)
VERSION=$("$PY" -c 'import mlchaos_steps; print(mlchaos_steps.__version__)')
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "tools"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v bwrap >/dev/null || missing+=(bubblewrap)
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
mkdir -p "$WORK"

step "base image $BASE"
if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,passwd bookworm "$WORK/rootfs" "$MIRROR"
        rm -rf "$WORK/rootfs/var/cache/apt/archives"/*.deb "$WORK/rootfs/var/lib/apt/lists"/*
    fi
    ctr=$("${BUILDAH[@]}" from scratch)
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    cp -a "$WORK/rootfs/." "$mnt/"
    "${BUILDAH[@]}" umount "$ctr"
    "${BUILDAH[@]}" commit --quiet "$ctr" "$BASE" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
fi

step "wheelhouse (pinned to .venv)"
rm -rf "$WORK/context" && mkdir -p "$WORK/context/wheelhouse"
"$ROOT/.venv/bin/pip" freeze --exclude-editable | grep -v '^-e ' > "$WORK/constraints.txt"
"$ROOT/.venv/bin/pip" wheel --quiet --wheel-dir "$WORK/context/wheelhouse" \
    --constraint "$WORK/constraints.txt" "$ROOT[mlflow,examples]"

step "build $IMAGE"
"${BUILDAH[@]}" build --quiet --isolation chroot --layers=false --build-arg "BASE=$BASE" \
    --build-arg "VERSION=$VERSION" -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$WORK/context" >/dev/null

step "four phases inside the image: read-only root, tmpfs /tmp, uid 10001"
ctr=$("${BUILDAH[@]}" from "$IMAGE")
trap '"${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
rootfs=$("${BUILDAH[@]}" mount "$ctr")
data="$WORK/data" && rm -rf "$data" && mkdir -p "$data"  # owned by us: uid 10001 inside the namespace
in_image() {  # run a command as the image would: its user, its PATH, nothing writable but /tmp and /mnt (the volume)
    bwrap --ro-bind "$rootfs" / --tmpfs /tmp --proc /proc --dev /dev --bind "$data" /mnt \
        --unshare-all --uid 10001 --gid 10001 --clearenv \
        --setenv PATH /opt/mlchaos/bin:/usr/bin:/bin --setenv HOME /tmp \
        --setenv MLCHAOS_HOME /mnt/home --setenv PYTHONDONTWRITEBYTECODE 1 "$@"
}
in_image python -m mlchaos_steps.examples.training prepare --store /mnt/checkpoints
in_image python -m mlchaos_steps.examples.training train --store /mnt/checkpoints
cat > "$data/stage.yaml" <<'STAGE'
kind: CheckpointWipe
spec:
  store: file:///mnt/checkpoints
  pattern: 'step-(\d+)'
  mode: corrupt-latest
  resume:
    command: [python, -m, mlchaos_steps.examples.trainer, --resume, --no-save, --store, /mnt/checkpoints]
    max_lost_steps: 200
STAGE
before=$(cd "$data/checkpoints" && find . -type f -exec sha256sum {} + | sort)
for phase in snapshot inject verify restore; do
    in_image mlchaos run /mnt/stage.yaml --phase "$phase" --run-key image-check --json \
        --result-file "/mnt/$phase.json" >/dev/null
    printf '%s: %s\n' "$phase" "$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("verdict") or r["status"])' "$data/$phase.json")"
done
after=$(cd "$data/checkpoints" && find . -type f -exec sha256sum {} + | sort)
"$PY" - "$data/verify.json" <<'CHECK'
import json, sys
result = json.load(open(sys.argv[1]))
assert result["verdict"] == "passed", result
CHECK
[ "$before" = "$after" ] || { echo "image-check: restore did not put the checkpoints back" >&2; exit 1; }
if in_image sh -c 'touch /opt/mlchaos/probe' 2>/dev/null; then
    echo "image-check: the root filesystem was writable" >&2; exit 1
fi
[ "$(in_image id -u)" = 10001 ] || { echo "image-check: not running as uid 10001" >&2; exit 1; }
step "image-check passed: verdict passed, checkpoints restored byte for byte, read-only root, uid 10001"
