#!/usr/bin/env bash
# Build the Docker image with podman and smoke-test it end to end, without a Docker engine.
#
#   sudo scripts/docker-smoke.sh [CHECKPOINT]
#
# Follows ../shared/docs/environment.md ("Containers"): podman builds the Dockerfile on a local
# Debian bookworm minbase (debootstrapped once, cached as localhost/debian-base:bookworm);
# `podman run` does not work on this machine, so the image's filesystem is exported and its CMD
# is started with chroot, as the image's user, with the image's environment, on a free
# loopback port. Every route is then queried from outside with curl and real audio.
#
# CHECKPOINT: a .safetensors file, copied into the exported tree and served through
#   SPEECHSSL_CHECKPOINT. Without it the model shipped in the package
#   (speechssl/assets/default.safetensors) is served, SPEECHSSL_CHECKPOINT unset, after
#   checking the image holds the same file.
# Environment: IMAGE (localhost/speechssl:smoke), BASE (localhost/debian-base:bookworm),
#   WORK (/tmp/speechssl-smoke: logs, build pip.conf, exported tree), SKIP_BUILD=1 (reuse
#   IMAGE), KEEP=1 (keep the exported tree), READY_TIMEOUT (300 s), CLEAN=1 (remove the image
#   and the build cache at the end; by default they stay, so that a rebuild after a code change
#   takes a minute or two instead of ~15).
# Needs root, podman, debootstrap (installed with apt-get when missing), curl, python3.
# A script, not a test: `make test` / pytest do not run it. Exit status 0 only if all checks pass.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-localhost/speechssl:smoke}
BASE=${BASE:-localhost/debian-base:bookworm}
WORK=${WORK:-/tmp/speechssl-smoke}
READY_TIMEOUT=${READY_TIMEOUT:-300}
AUDIO=$REPO/tests/fixtures/speech.wav
AUDIO_B=$REPO/tests/fixtures/speech_8k.wav
PODMAN=(podman --cgroup-manager=cgroupfs)
ROOT=$WORK/rootfs-image
SERVER_PID=
CHECKS=()   # "PASS|FAIL name: detail"

log() { printf '\n== %s\n' "$*"; }
die() { echo "docker-smoke: $*" >&2; exit 2; }
check() {  # check NAME OK(0/1) DETAIL
    if [ "$2" = 0 ]; then CHECKS+=("PASS  $1${3:+: $3}"); else CHECKS+=("FAIL  $1${3:+: $3}"); fi
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, podman and chroot need it)"
for tool in curl python3; do command -v "$tool" >/dev/null || die "$tool is missing"; done
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing podman and debootstrap"
    apt-get install -y podman debootstrap >/dev/null
fi
CHECKPOINT=${1:-}
if [ -n "$CHECKPOINT" ]; then
    [ -f "$CHECKPOINT" ] || die "no such checkpoint: $CHECKPOINT"
    CHECKPOINT=$(cd "$(dirname "$CHECKPOINT")" && pwd)/$(basename "$CHECKPOINT")
elif [ ! -f "$REPO/speechssl/assets/default.safetensors" ]; then
    die "no checkpoint given and no shipped model at speechssl/assets/default.safetensors; pass one"
fi
mkdir -p "$WORK"
# The build keeps the dependency stage (~6.5 GB) as cache next to the image (~6.7 GB), and the
# export needs as much again.
for dir in /var/lib/containers "$WORK"; do
    mkdir -p "$dir"
    free_gb=$(( $(df --output=avail -k "$dir" | tail -1) / 1048576 ))
    [ "$free_gb" -ge 25 ] || die "only $free_gb GB free under $dir; the build and the export need ~25 GB"
done

# Nothing may stay mounted in, or be deleted through, the exported tree.
unmount_root() {
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount "$ROOT/proc" || umount -l "$ROOT/proc"; fi
}
remove_root() {
    unmount_root
    if [ -d "$ROOT" ]; then
        if findmnt -rno TARGET | grep -q "^$ROOT"; then die "something is still mounted under $ROOT; not removing it"; fi
        rm -rf --one-file-system "$ROOT"
    fi
}
alive() {  # a running process (an exited child of this script stays a zombie until `wait`)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}
stop_server() {
    if [ -n "$SERVER_PID" ] && alive "$SERVER_PID"; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 60); do alive "$SERVER_PID" || break; sleep 0.5; done
        if alive "$SERVER_PID"; then kill -KILL "$SERVER_PID"; fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
cleanup() {
    stop_server
    if [ "${KEEP:-0}" = 1 ]; then unmount_root; else remove_root; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- base image (once)
if ! "${PODMAN[@]}" image exists "$BASE"; then
    log "debootstrap a bookworm minbase -> $BASE"
    rm -rf --one-file-system "$WORK/debootstrap"
    nice -n 10 debootstrap --variant=minbase bookworm "$WORK/debootstrap" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    tar -C "$WORK/debootstrap" -c . | "${PODMAN[@]}" import --quiet - "$BASE" >/dev/null
    rm -rf --one-file-system "$WORK/debootstrap"
fi

# ---------------------------------------------------------------- build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # Build-time only mounts (they leave nothing in the image): the CA bundle the host trusts
    # (PyPI is reached through a proxy), and the host's local wheel folders, so that torch and
    # its CUDA libraries come from disk instead of a multi-GB download. Same pip settings as
    # the host's own config (`pip config list`).
    MOUNTS=(-v /etc/ssl/certs/ca-certificates.crt:/etc/pip-ca.crt:ro -v "$WORK/pip-build.conf:/etc/pip.conf:ro")
    {
        echo '[global]'
        echo 'cert = /etc/pip-ca.crt'
        echo 'default-timeout = 180'
        [ -d /opt/wheels ] && echo 'find-links = /opt/wheels' && MOUNTS+=(-v /opt/wheels:/opt/wheels:ro)
        extra=
        for d in /opt/pypi /opt/pypi-more; do
            if [ -d "$d/simple" ]; then extra="$extra file://$d/simple"; MOUNTS+=(-v "$d:$d:ro"); fi
        done
        [ -n "$extra" ] && echo "extra-index-url =$extra"
        if [ -f /etc/xdg/pip/constraints.txt ]; then
            echo 'constraint = /etc/pip-constraints.txt'
            MOUNTS+=(-v /etc/xdg/pip/constraints.txt:/etc/pip-constraints.txt:ro)
        fi
    } > "$WORK/pip-build.conf"
    log "podman build -> $IMAGE (log: $WORK/build.log)"
    echo "pip.conf for the build:"; sed 's/^/    /' "$WORK/pip-build.conf"
    start=$(date +%s)
    set +e
    # --format docker: the OCI format has no HEALTHCHECK (podman would drop it with a warning).
    nice -n 10 "${PODMAN[@]}" build --isolation=chroot --format docker --force-rm "${MOUNTS[@]}" \
        --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" > "$WORK/build.log" 2>&1
    rc=$?
    set -e
    echo "build: exit $rc in $(( $(date +%s) - start )) s; last lines of the log:"
    tail -15 "$WORK/build.log" | sed 's/^/    /'
    check "podman build" "$rc" "exit $rc"
    [ "$rc" = 0 ] || { printf '%s\n' "${CHECKS[@]}"; echo "RESULT: FAIL"; exit 1; }
fi
"${PODMAN[@]}" image exists "$IMAGE" || die "no image $IMAGE (build it: drop SKIP_BUILD)"

# ---------------------------------------------------------------- image config
# From here on a failed check is recorded, not fatal; what must work says `|| die`.
set +e
log "image config"
"${PODMAN[@]}" image inspect "$IMAGE" > "$WORK/inspect.json" || die "podman image inspect failed"
python3 - "$WORK/inspect.json" "$WORK" <<'EOF' || die "cannot read the image config"
import json, sys
info = json.load(open(sys.argv[1]))[0]
cfg = info.get("Config", {})
hc = info.get("Healthcheck") or info.get("HealthCheck") or cfg.get("Healthcheck") or {}  # podman: top level
out = sys.argv[2]
open(f"{out}/image.env", "w").write("".join(e + "\0" for e in cfg.get("Env", [])))
open(f"{out}/image.cmd", "w").write("".join(c + "\0" for c in (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])))
open(f"{out}/image.health", "w").write("".join(c + "\0" for c in hc.get("Test", [])))
open(f"{out}/image.user", "w").write(cfg.get("User", ""))
open(f"{out}/image.workdir", "w").write(cfg.get("WorkingDir") or "/")
print("  User:       ", cfg.get("User"))
print("  Cmd:        ", cfg.get("Entrypoint"), cfg.get("Cmd"))
print("  Exposed:    ", list(cfg.get("ExposedPorts", {})))
print("  WorkingDir: ", cfg.get("WorkingDir"))
print("  Healthcheck:", hc.get("Test"))
print("  Env:        ", [e for e in cfg.get("Env", []) if e.startswith(("SPEECHSSL_", "PATH="))])
EOF
mapfile -d '' IMG_ENV < "$WORK/image.env"
mapfile -d '' IMG_CMD < "$WORK/image.cmd"
mapfile -d '' IMG_HEALTH < "$WORK/image.health"
IMG_USER=$(cat "$WORK/image.user")
IMG_WORKDIR=$(cat "$WORK/image.workdir")
[ "${IMG_CMD[*]}" = "speechssl serve --host 0.0.0.0" ]; check "CMD is 'speechssl serve --host 0.0.0.0'" $? "${IMG_CMD[*]}"
[ -n "$IMG_USER" ] && [ "$IMG_USER" != root ] && [ "$IMG_USER" != 0 ]; check "non-root USER" $? "$IMG_USER"
grep -q '"8000/tcp"' "$WORK/inspect.json"; check "EXPOSE 8000" $?
[ "${#IMG_HEALTH[@]}" -gt 1 ]; check "HEALTHCHECK kept in the image" $? "${IMG_HEALTH[*]:0:2} ..."

# ---------------------------------------------------------------- export + start under chroot
log "export the image filesystem -> $ROOT"
remove_root
mkdir -p "$ROOT" || die "cannot create $ROOT"
cid=$("${PODMAN[@]}" create "$IMAGE") || die "podman create failed"
"${PODMAN[@]}" export "$cid" | tar -C "$ROOT" -x || die "podman export failed"
"${PODMAN[@]}" rm "$cid" >/dev/null 2>"$WORK/podman-rm.log"   # (it complains about systemd healthcheck timers)
none_exist() { local p; for p in "$@"; do [ -e "$p" ] && { echo "  found: ${p#"$ROOT"}"; return 1; }; done; return 0; }
none_exist "$ROOT"/usr/bin/{gcc,cc,g++,make} "$ROOT"/usr/bin/*-linux-gnu-gcc*
check "no compiler in the runtime image" $?
none_exist "$ROOT"/src "$ROOT"/var/lib/apt/lists/*_Packages*
check "no source tree or apt lists in the runtime image" $?
none_exist "$ROOT"/opt/venv/lib/python3*/site-packages/{pytest,transformers,openai,httpx}
check "no dev extra (pytest, transformers, openai, httpx) installed" $?

# A container's minimum: /proc, a few device nodes, a writable /tmp and /dev/shm.
mkdir -p "$ROOT/proc" "$ROOT/dev/shm" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp" "$ROOT/dev/shm"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<< "$node"
    [ -e "$ROOT/dev/$name" ] || mknod -m 666 "$ROOT/dev/$name" c "$major" "$minor"
done
mount -t proc proc "$ROOT/proc" || die "cannot mount /proc in $ROOT"

uid=$(awk -F: -v u="$IMG_USER" '$1 == u || $3 == u {print $3; exit}' "$ROOT/etc/passwd")
gid=$(awk -F: -v u="$IMG_USER" '$1 == u || $3 == u {print $4; exit}' "$ROOT/etc/passwd")
home=$(awk -F: -v u="$IMG_USER" '$1 == u || $3 == u {print $6; exit}' "$ROOT/etc/passwd")
[ -n "$uid" ] || die "user $IMG_USER not in the image's /etc/passwd"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUN_ENV=("${IMG_ENV[@]}" "HOME=$home" "HOSTNAME=speechssl-smoke" "SPEECHSSL_PORT=$PORT")
if [ -n "$CHECKPOINT" ]; then
    cp "$CHECKPOINT" "$ROOT/models/smoke.safetensors" || die "cannot copy the checkpoint"
    chmod 644 "$ROOT/models/smoke.safetensors"
    RUN_ENV+=("SPEECHSSL_CHECKPOINT=/models/smoke.safetensors")
    echo "checkpoint: $CHECKPOINT -> /models/smoke.safetensors (SPEECHSSL_CHECKPOINT)"
else
    shipped=$(ls "$ROOT"/opt/venv/lib/python3*/site-packages/speechssl/assets/default.safetensors 2>/dev/null | head -1)
    [ -n "$shipped" ] && cmp -s "$shipped" "$REPO/speechssl/assets/default.safetensors"
    check "image ships speechssl/assets/default.safetensors (package data)" $? "${shipped#"$ROOT"}"
    echo "checkpoint: the shipped default model (SPEECHSSL_CHECKPOINT unset)"
fi
# Same as `docker run`: the image's env, user, working dir and CMD; SPEECHSSL_PORT picks a free port.
# IN_IMAGE CMD... runs CMD there; env, chroot and sh each exec the next, so $! is the server's pid.
IN_IMAGE=(env -i "${RUN_ENV[@]}" /usr/sbin/chroot --userspec="$uid:$gid" "$ROOT"
          /bin/sh -c 'cd "$0" && exec "$@"' "$IMG_WORKDIR")
log "start: chroot --userspec=$uid:$gid $ROOT ${IMG_CMD[*]}  (SPEECHSSL_PORT=$PORT; log: $WORK/server.log)"
nice -n 5 "${IN_IMAGE[@]}" "${IMG_CMD[@]}" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=http://127.0.0.1:$PORT
start=$(date +%s)
ready=1
while [ $(( $(date +%s) - start )) -lt "$READY_TIMEOUT" ]; do
    alive "$SERVER_PID" || break
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/ready")" = 200 ]; then ready=0; break; fi
    sleep 1
done
check "server ready (/ready 200)" "$ready" "after $(( $(date +%s) - start )) s"
if [ "$ready" != 0 ]; then
    echo "server log:"; tail -40 "$WORK/server.log" | sed 's/^/    /'
    printf '\n%s\n' "${CHECKS[@]}"; echo "RESULT: FAIL"; exit 1
fi
server_uid=$(awk '/^Uid:/ {print $2}' "/proc/$SERVER_PID/status")
[ "$server_uid" = "$uid" ] && [ "$uid" != 0 ]; check "server process runs as uid $uid" $? "uid $server_uid"

# ---------------------------------------------------------------- query every route from outside
# request NAME EXPECT CURL-ARGS...: EXPECT is 200, or "head:<head>" (200 if /v1/models lists the
# head, else a 4xx JSON error with code head_missing).
HEADS=
request() {
    local name=$1 expect=$2; shift 2
    local code
    code=$(curl -sS -o "$WORK/body" -w '%{http_code}' "$@") || code=000
    local rc=0
    python3 - "$name" "$expect" "$code" "$WORK/body" "$HEADS" <<'EOF' || rc=$?
import json, sys
name, expect, code, path, heads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
raw = open(path, "rb").read()
def short(x):
    if isinstance(x, list) and len(x) > 6 and all(isinstance(v, (int, float)) for v in x):
        return f"[{len(x)} numbers: " + ", ".join(f"{v:.4g}" for v in x[:3]) + ", ...]"
    if isinstance(x, list):
        return [short(v) for v in x[:4]] + ([f"... {len(x) - 4} more"] if len(x) > 4 else [])
    if isinstance(x, dict):
        return {k: short(v) for k, v in x.items()}
    return x
try:
    body = json.loads(raw)
    shown = json.dumps(short(body))
except ValueError:
    body, text = None, raw.decode("utf-8", "replace")
    lines = text.splitlines()
    shown = "\n      ".join(lines[:8]) + (f"\n      ... {len(lines) - 8} more lines" if len(lines) > 8 else "")
print(f"  {name} -> {code}\n      {shown[:1500]}")
ok = code == 200
if expect.startswith("head:"):
    head = expect[5:]
    if head not in heads:
        ok = 400 <= code < 500 and isinstance(body, dict) and body.get("error", {}).get("code") == "head_missing"
        print(f"      (checkpoint has no '{head}' head: expecting a 4xx head_missing error)")
if ok and code == 200 and name.startswith("GET /metrics"):
    ok = b"# TYPE" in raw
if ok and code == 200 and isinstance(body, dict) and name == "GET /v1/models":
    card = (body.get("data") or [body])[0]
    open(path + ".heads", "w").write(",".join(card.get("heads", [])))
sys.exit(0 if ok else 1)
EOF
    check "$name" "$rc" "HTTP $code"
}

log "queries ($URL, audio: tests/fixtures/$(basename "$AUDIO"))"
request "GET /health" 200 "$URL/health"
request "GET /ready" 200 "$URL/ready"
request "GET /metrics" 200 "$URL/metrics"
rm -f "$WORK/body.heads"
request "GET /v1/models" 200 "$URL/v1/models"
HEADS=$(cat "$WORK/body.heads" 2>/dev/null || true)
echo "  heads: ${HEADS:-?}"
request "POST /v1/embeddings" 200 -F "file=@$AUDIO" "$URL/v1/embeddings"
request "POST /v1/audio/transcriptions (json)" head:ctc -F "file=@$AUDIO" "$URL/v1/audio/transcriptions"
request "POST /v1/audio/transcriptions (verbose_json, words)" head:ctc -F "file=@$AUDIO" \
    -F response_format=verbose_json -F 'timestamp_granularities[]=word' "$URL/v1/audio/transcriptions"
request "POST /v1/speakers/embed" head:speaker -F "file=@$AUDIO" "$URL/v1/speakers/embed"
request "POST /v1/speakers/verify" head:speaker -F "file_a=@$AUDIO" -F "file_b=@$AUDIO_B" "$URL/v1/speakers/verify"
echo "  (expected reference text: $(cat "$REPO/tests/fixtures/speech.txt" 2>/dev/null))"

log "the image's HEALTHCHECK command, run inside the image"
case "${IMG_HEALTH[0]:-}" in
    CMD) "${IN_IMAGE[@]}" "${IMG_HEALTH[@]:1}"; rc=$? ;;
    CMD-SHELL) "${IN_IMAGE[@]}" /bin/sh -c "${IMG_HEALTH[1]}"; rc=$? ;;
    *) echo "  no HEALTHCHECK in the image"; rc=1 ;;
esac
check "HEALTHCHECK command exits 0" "$rc" "exit $rc"

log "stop the server (SIGTERM)"
pid=$SERVER_PID
kill -TERM "$pid"
stopped=1
for _ in $(seq 60); do alive "$pid" || { stopped=0; break; }; sleep 0.5; done
stop_server
grep -q "Application shutdown complete" "$WORK/server.log"
check "server stops on SIGTERM within 30 s (graceful shutdown)" "$(( stopped || $? ))"
echo "server log (last lines):"; tail -6 "$WORK/server.log" | sed 's/^/    /'

# ---------------------------------------------------------------- size + summary
log "image size"
"${PODMAN[@]}" images "$IMAGE"
bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "podman image inspect .Size: $bytes bytes ($(numfmt --to=iec --suffix=B "$bytes"))"
echo "exported filesystem: $(du -sh --one-file-system "$ROOT" | cut -f1) (of which /opt/venv $(du -sh "$ROOT/opt/venv" | cut -f1))"

if [ "${CLEAN:-0}" = 1 ]; then
    log "CLEAN=1: removing $IMAGE and the build cache"
    "${PODMAN[@]}" rmi "$IMAGE" >/dev/null
    "${PODMAN[@]}" image prune -f >/dev/null
fi

log "summary"
printf '%s\n' "${CHECKS[@]}"
if printf '%s\n' "${CHECKS[@]}" | grep -q '^FAIL'; then echo "RESULT: FAIL"; exit 1; fi
echo "RESULT: PASS ($(printf '%s\n' "${CHECKS[@]}" | grep -c '^PASS') checks)"
