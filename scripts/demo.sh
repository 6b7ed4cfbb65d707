#!/usr/bin/env bash
# make demo: Redis, the demo backends (6 shards x 3 servers), HAProxy with the
# config rendered from demo/topology.yaml, and the syncer, all on loopback.
# Ctrl-C stops everything this script started and removes its files.
# ROUTING=ids (make demo ROUTING=ids): the same topology with routing: ids;
# users get real IDs (docs/IDS.md) and the syncer keeps the logical map too.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/shardmap-demo            # the paths demo/topology.yaml names
TOPO=demo/topology.yaml
BIN=${SHARDMAP_BIN:-bin}          # where mapctl, syncer and demo-backends are
ROUTING=${ROUTING:-users}
case "$ROUTING" in
  users|ids) ;;
  *) echo "demo: ROUTING=$ROUTING: want users or ids" >&2; exit 2 ;;
esac
start=$(date +%s)

for bin in haproxy redis-server "$BIN/mapctl" "$BIN/syncer" "$BIN/demo-backends"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ] || { echo "demo: $bin is missing (run: make demo)" >&2; exit 1; }
done
taken=()
for port in 6379 7000 8404 8090 9477 $(seq 8000 8018); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then taken+=("$port"); fi
done
if [ ${#taken[@]} -gt 0 ]; then
  echo "demo: port(s) ${taken[*]} on 127.0.0.1 already in use; stop what holds them (a running demo?) and try again" >&2
  exit 1
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "demo: stopping"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup INT TERM EXIT
rm -rf "$DIR"; mkdir -p "$DIR"
if [ "$ROUTING" = ids ]; then
  # The demo topology with routing: ids: the syncer's map is the moved map.
  sed -e "s#^map: .*#routing: ids\nmap: $DIR/moved.map#" "$TOPO" >"$DIR/topology.yaml"
  TOPO=$DIR/topology.yaml
fi

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local until=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$until" ]; then echo "demo: timed out waiting for $what; logs in $DIR" >&2; tail -n 5 "$DIR"/*.log >&2; exit 1; fi
    sleep 0.1
  done
}

syncer_ready() { # /readyz answers 200: both maps are in HAProxy (bash only, no curl needed)
  exec 3<>/dev/tcp/127.0.0.1/9477 || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  local status; read -r _ status _ <&3; exec 3<&-
  [ "$status" = 200 ]
}

redis-server --port 6379 --bind 127.0.0.1 --dir "$DIR" --save "" --appendonly no >"$DIR/redis.log" 2>&1 &
pids+=($!)
backend_ids=()
if [ "$ROUTING" = ids ]; then backend_ids=(--ids --redis redis://127.0.0.1:6379/0); fi
"$BIN"/demo-backends --base-port 8000 --shards 6 --servers 3 --spare shard2 --admin 127.0.0.1:8090 "${backend_ids[@]}" >"$DIR/backends.log" 2>&1 &
pids+=($!)
"$BIN"/mapctl config render --topology "$TOPO" -o "$DIR/haproxy.cfg"  # ids: writes logical.map too
touch "$DIR/users.map" "$DIR/moved.map"
haproxy -c -q -f "$DIR/haproxy.cfg"
haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 &
pids+=($!)
wait_for 10 "haproxy's socket" test -S "$DIR/admin.sock"
if [ "$ROUTING" = ids ]; then
  # The topology tells the syncer routing: ids: it syncs the moved map and
  # the logical map (seeding Redis from logical.map).
  "$BIN"/syncer --config "$TOPO" --listen 127.0.0.1:9477 >"$DIR/syncer.log" 2>&1 &
  pids+=($!)
  wait_for 20 "the syncer" syncer_ready
else
  "$BIN"/syncer --socket "$DIR/admin.sock" --map "$DIR/users.map" --listen 127.0.0.1:9477 >"$DIR/syncer.log" 2>&1 &
  pids+=($!)
  # Seeding with --wait succeeds once the syncer is live and has published HAProxy's backends.
  wait_for 20 "the syncer" "$BIN"/mapctl set 0 shard0 --wait --timeout 2s
  for u in 1 2 3 4 5; do "$BIN"/mapctl set "$u" "shard$u" --wait; done
fi

if [ "$ROUTING" = ids ]; then
cat <<EOT

shardmap demo is up in routing: ids ($(( $(date +%s) - start )) s). Everything is on 127.0.0.1; Ctrl-C stops it.

  App (log in as user 0-5, password sam):  http://127.0.0.1:7000/
    each user gets a real ID, on a logical shard of shard0-5; the page shows it and its parts
  HAProxy stats:                           http://127.0.0.1:8404/stats
  Syncer health (both maps):               http://127.0.0.1:9477/readyz
  Files and logs:                          $DIR

Try, in another terminal (ID: the one the page shows):
  bin/mapctl logical list
  bin/mapctl id parse ID                    # time, logical shard, sequence, where it routes now
  bin/mapctl set ID shard1 --wait           # move this one ID; its next page load comes from shard1
  bin/mapctl del ID --wait                  # back to its logical shard's shard
  bin/mapctl logical set 4778 shard0 --wait # move user 3's logical shard (and every ID on it)
  bin/mapctl id new --logical 42 -o json
EOT
else
cat <<EOT

shardmap demo is up ($(( $(date +%s) - start )) s). Everything is on 127.0.0.1; Ctrl-C stops it.

  App (log in as user 0-5, password sam):  http://127.0.0.1:7000/
  HAProxy stats:                           http://127.0.0.1:8404/stats
  Syncer health:                           http://127.0.0.1:9477/readyz
  Files and logs:                          $DIR

Try, in another terminal:
  bin/mapctl list
  bin/mapctl set 3 shard1 --wait      # user 3's next page load comes from shard1
  curl -s -b user=3 http://127.0.0.1:7000/ | grep served
  bin/mapctl del 3 --wait             # back to the default shard, shard0
  # move user 4 with their data (each shard keeps a tiny key-value store; the page shows it):
  curl -s -b user=4 -X PUT --data hello http://127.0.0.1:7000/kv/note
  bin/mapctl move 4 --to shard1 --freeze --copy-cmd 'bin/demo-backends copy' \
      --verify-cmd 'bin/demo-backends verify' --cleanup-cmd 'bin/demo-backends cleanup'
  curl -s -b user=4 http://127.0.0.1:7000/kv/note   # "shard":"shard1", "value":"hello"
  bin/mapctl status --socket $DIR/admin.sock --map $DIR/users.map
  # a spare server on :8018 joins shard2 without a reload (and is added to the topology):
  bin/mapctl shard add-server shard2 127.0.0.1:8018 --topology $DIR/topology.yaml
  # rebalance by load: users 6-11 join user 3 on shard3, load them (3rd terminal), spread them:
  for u in 6 7 8 9 10 11; do bin/mapctl set \$u shard3 --wait; done
  bin/demo-backends load --users 3,6,7,8,9,10,11 --rate 50 --duration 2m
  bin/mapctl rebalance plan --by load --sample 2s --socket $DIR/admin.sock --apply --freeze \\
      --copy-cmd 'bin/demo-backends copy' --verify-cmd 'bin/demo-backends verify' --cleanup-cmd 'bin/demo-backends cleanup'
  # then watch http://127.0.0.1:8404/stats: shard3's session rate falls, the others' rise
EOT
fi
[ "$TOPO" = "$DIR/topology.yaml" ] || cp "$TOPO" "$DIR/topology.yaml"
wait "${pids[@]}"
