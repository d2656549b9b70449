#!/usr/bin/env bash
# Upgrade survival (issue 9, docs/packaging.md): a task keeps running while the agent package
# is upgraded. Uses the files of the built .debs (target/packages, unpacked with dpkg-deb -x)
# and no systemd (CI machines have none), so it plays the upgrade the way dpkg and systemd do
# it for cairn-agent.service:
#   1. the packaged cairn-master and cairn-agent (started through the packaged
#      /usr/libexec/cairn/cairn-agent-start with the packaged /etc/cairn/agent.toml) run on
#      loopback; the packaged `cairn run --detach` starts a task;
#   2. dpkg unpacks the new files: each binary is replaced by rename, as dpkg does;
#   3. postinst's `deb-systemd-invoke restart`: with KillMode=process systemd sends SIGTERM
#      to the agent's main process only, waits for it, and runs ExecStart again;
#   4. checks: the task's processes are the same and alive, the master still has the task
#      TASK_RUNNING on the same agent id, and the new agent lists it (it recovered it).
# The "new" package is the same build: what is under test is the upgrade sequence, not a
# change between versions. Needs root; run by packaging/tests/run.sh after the packages are built.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
out=$top/target/packages
fail() { echo "upgrade test: FAIL: $*" >&2; exit 1; }
step() { printf '\n--- upgrade: %s\n' "$*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for: $what"
    sleep 0.3
  done
}

tmp=$(mktemp -d /tmp/cairn-upgrade.XXXXXX)
root=$tmp/root
parent=cairn-upgrade-test-$$
master_pid="" agent_pid=""
cleanup() {
  set +e
  [ -n "${task:-}" ] && "$root/usr/bin/cairn" kill --master "$murl" "$task" >/dev/null 2>&1
  for pid in $agent_pid $master_pid; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  # Whatever is left of the task (a failed check can leave it): kill it, remove its cgroups.
  for procs in $(find /sys/fs/cgroup/*/"$parent" -name cgroup.procs 2>/dev/null); do
    xargs -r kill -KILL <"$procs" 2>/dev/null
  done
  sleep 0.5
  find /sys/fs/cgroup/*/"$parent" -depth -type d -exec rmdir {} + 2>/dev/null
  # Sandboxes may still hold the task's read-only host-root mounts.
  grep -o " $tmp/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

step "unpack the packages"
for deb in "$out"/cairn-agent_*.deb "$out"/cairn-master_*.deb "$out"/cairn_*.deb; do
  [ -f "$deb" ] || fail "no package $deb (build them with scripts/package)"
  dpkg-deb -x "$deb" "$root"
done
# The start helper execs /usr/bin/cairn-agent; point it at the unpacked one.
sed "s|^agent=/usr/bin/cairn-agent$|agent=$root/usr/bin/cairn-agent|" \
  "$root/usr/libexec/cairn/cairn-agent-start" >"$tmp/cairn-agent-start"
chmod 755 "$tmp/cairn-agent-start"
grep -q "^agent=$root/usr/bin/cairn-agent$" "$tmp/cairn-agent-start" || fail "start helper has no agent= line"

mport=$(free_port) aport=$(free_port)
murl=http://127.0.0.1:$mport
export CAIRN_MASTER=$murl

step "start the packaged master and agent"
"$root/usr/bin/cairn-master" --config "$root/etc/cairn/master.toml" \
  --listen "127.0.0.1:$mport" --work-dir "$tmp/master" >"$tmp/master.log" 2>&1 &
master_pid=$!
start_agent() {
  CAIRN_WORK_DIR=$tmp/agent CAIRN_MASTER=127.0.0.1:$mport CAIRN_LISTEN_IP=127.0.0.1 \
    CAIRN_PORT=$aport CAIRN_CGROUP_PARENT=$parent CAIRN_RESOURCES='cpus:1;mem:512' \
    "$tmp/cairn-agent-start" --config "$root/etc/cairn/agent.toml" >>"$tmp/agent.log" 2>&1 &
  agent_pid=$!
}
start_agent
agents_json() { "$root/usr/bin/cairn" agents --json; }
one_agent() { agents_json | python3 -c 'import json, sys; a = json.load(sys.stdin); sys.exit(len(a) != 1)'; }
wait_for 60 "the agent registered" one_agent
agent_id=$(agents_json | python3 -c 'import json, sys; a = json.load(sys.stdin)[0]; print(a.get("id") or a["agent_id"])')

step "start a task"
task=$("$root/usr/bin/cairn" run --detach --name upgrade --cpus 0.1 --mem 32M -- sleep 3600) \
  || fail "cairn run --detach failed; agent log: $(tail -20 "$tmp/agent.log")"
task=$(tail -1 <<<"$task")
echo "task $task on agent $agent_id"
task_pids() { find /sys/fs/cgroup/pids/"$parent" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -n | tr '\n' ' '; }
wait_for 30 "the task's processes" test -n "$(task_pids)"
before=$(task_pids)
echo "task processes: $before"
task_state() {
  "$root/usr/bin/cairn" ps --json | python3 -c '
import json, sys
task, agent = sys.argv[1], sys.argv[2]
for t in json.load(sys.stdin):
    tid = t.get("id") or t.get("task_id")
    if tid == task:
        print(t.get("state"), t.get("agent_id") or t.get("agent"))
' "$task" "$agent_id"
}
running_on_agent() { [ "$(task_state)" = "TASK_RUNNING $agent_id" ]; }
wait_for 30 "TASK_RUNNING in cairn ps" running_on_agent

step "dpkg unpacks the new files (rename over the old ones)"
for bin in cairn-agent cairn-supervisor; do
  cp "$root/usr/bin/$bin" "$root/usr/bin/$bin.dpkg-new"
  mv -f "$root/usr/bin/$bin.dpkg-new" "$root/usr/bin/$bin"
done

step "postinst restarts the unit: SIGTERM to the main process only (KillMode=process)"
kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=""
now=$(task_pids)
[ "$now" = "$before" ] || fail "task processes changed while the agent was down: '$before' -> '$now'"
for pid in $before; do kill -0 "$pid" || fail "task process $pid died with the agent"; done
start_agent

step "the new agent recovers the task"
agent_lists_task() {
  curl -sf "http://127.0.0.1:$aport/state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
tasks = [t["id"] for f in s.get("frameworks", []) for e in f.get("executors", []) for t in e.get("tasks", [])]
sys.exit(0 if sys.argv[1] in tasks and s.get("id") == sys.argv[2] else 1)
' "$task" "$agent_id"
}
wait_for 60 "the restarted agent's /state lists $task under agent id $agent_id" agent_lists_task
wait_for 30 "TASK_RUNNING on the same agent after the upgrade" running_on_agent
after=$(task_pids)
[ "$after" = "$before" ] || fail "task processes changed across the upgrade: '$before' -> '$after'"
grep -qi "recover" "$tmp/agent.log" || fail "the agent log says nothing about recovery"

step "the task still answers to the cluster: cairn kill"
"$root/usr/bin/cairn" kill "$task" >/dev/null || fail "cairn kill $task"
task_gone() { [ -z "$(task_pids)" ]; }
wait_for 30 "the task's processes gone after cairn kill" task_gone
task=""
echo
echo "upgrade test: ok (task processes $before survived the agent's upgrade restart)"
