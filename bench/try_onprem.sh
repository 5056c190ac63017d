#!/usr/bin/env bash
# Proves that cluster/onprem.yaml works with `ray up` + `ray submit` (which works only on a cluster that
# `ray up` started), on this one machine and on 127.0.0.1 only: a throwaway user `ssnftry` reached over
# ssh (a private sshd on a free loopback port), a copy of onprem.yaml changed for this machine, a small
# sweep submitted with `ray submit`, its Parquet results checked, `ray down`.
#
#     sudo bash bench/try_onprem.sh          # root: apt, useradd, sshd
#
# Leaves nothing behind: the EXIT trap undoes every step, whichever one failed, then compares the
# machine with what it was at the start (packages, users, listening sockets, processes, /tmp) and prints
# "machine as found: yes/no". Exit status 0 only if every step, the Parquet check and that comparison passed.
#
# sshd is not installed: the openssh-server .deb is unpacked into the temp dir and run from there, because
# installing it here would upgrade openssh-client (the archive holds only the newer version), and no
# purge undoes an upgrade. What else is missing (rsync; acl, when the venv's interpreter sits below a folder
# ssnftry cannot pass) is installed with apt and purged at the end.
# If `ray submit` fails, the script says why, runs the same sweep with `ray exec` from ~/ssnf-src instead, so
# that everything after it is still tested, and fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv
TRY_USER=ssnftry
NAME=ssnf-try-$$
LO=127.0.0.1
QUIET="RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled"
[ "$(id -u)" = 0 ] || { echo "try_onprem: run as root: sudo bash $0" >&2; exit 2; }
[ -x "$VENV/bin/ray" ] || { echo "try_onprem: no venv with ray at $VENV: run make first" >&2; exit 2; }
if getent passwd "$TRY_USER" >/dev/null; then echo "try_onprem: user $TRY_USER exists: refusing" >&2; exit 2; fi
cd "$REPO"  # file_mounts' "." is the folder `ray up` runs in

# ---- the machine as found ---------------------------------------------------------------------------
packages() { dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' | awk '$1 == "ii" {print $2, $3}'; }
listening() { ss -ltnH | awk '{print $4}' | sort -u; }
ray_tmp() { ls -1A /tmp | grep -E '^(ray-config-|cluster-|ray_ssh_|coordinator\.)' || true; }
ID_FILES="/etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/subuid /etc/subgid"
WORK=$(mktemp -d /tmp/ssnftry.XXXXXX)  # short: Ray's socket paths under it must stay below 108 bytes
mkdir "$WORK/before"
for f in $ID_FILES; do [ -e "$f" ] && cp -p "$f" "$f-" "$WORK/before/" 2>/dev/null || true; done
PKGS0=$(packages); LISTEN0=$(listening); TMP0=$(ray_tmp); DEBS0=$(ls /var/cache/apt/archives)
RUN_SSHD0=$([ -e /run/sshd ] && echo yes || echo no)
PYDIR=$(dirname "$(readlink -f "$VENV/bin/python")")  # the venv's interpreter's folder, and the ones above
modes() { local d=$PYDIR; while [ "$d" != / ]; do ls -ld "$d"; d=$(dirname "$d"); done | awk '{print $1, $NF}'; }
MODES0=$(modes)  # mode and ACL mark (+): the run may open some of them to ssnftry (see BLOCKED)

# ---- teardown: every step, idempotent, whatever failed ----------------------------------------------
BLOCKED=(); RC=1; UP=0; DOWN=0; SSHD_PID=; MADE_USER=0; MADE_SSHD_USER=0; NEW_PKGS=; TRY_UID=
declare -A SECS=(); ORDER=()
RAY=(env TMPDIR="$WORK/rt" $QUIET "$VENV/bin/ray")  # root's ray CLI: its caches and cluster state in $WORK
# ray's ssh ControlMaster sockets for this cluster (command_runner.py: /tmp/ray_ssh_<user hash>/<cluster hash>)
CTL=/tmp/ray_ssh_$(printf %s "$(id -un)" | sha256sum | cut -c1-10)/$(printf %s "$NAME" | sha256sum | cut -c1-10)
fail() { echo "try_onprem: $*" >&2; exit 1; }
same() { if [ -e "$1" ] || [ -e "$2" ]; then cmp -s "$1" "$2"; fi; }  # equal, or both missing
cleanup() {
    set +e; trap - INT TERM HUP
    echo "== cleanup"
    [ "$UP" = 1 ] && [ "$DOWN" = 0 ] && timeout 300 "${RAY[@]}" down -y "$WORK/onprem.yaml"
    # ray's ssh control masters (ControlPersist) and the relays they started: close, then end by pid
    for s in "$CTL"/*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x 2>/dev/null; done
    for pid in $(pgrep -f -- "$WORK/"); do kill "$pid" 2>/dev/null; done
    if [ "$MADE_USER" = 1 ]; then
        pkill -KILL -u "$TRY_USER"; for _ in $(seq 50); do pgrep -u "$TRY_USER" >/dev/null || break; sleep 0.2; done
    fi
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null && wait "$SSHD_PID" 2>/dev/null
    for d in "${BLOCKED[@]}"; do
        if grep -q "^d[^ ]*+ $d\$" <<<"$MODES0"; then setfacl -x "u:$TRY_USER" "$d"; else setfacl -b "$d"; fi
    done
    [ "$MADE_USER" = 1 ] && userdel -r "$TRY_USER" 2>&1 | grep -v 'mail spool'
    [ "$MADE_SSHD_USER" = 1 ] && userdel sshd
    [ "$RUN_SSHD0" = no ] && rm -rf /run/sshd
    for e in $(comm -13 <(echo "$TMP0" | sort) <(ray_tmp | sort)); do rm -rf "/tmp/$e"; done
    [ -n "$NEW_PKGS" ] && DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $NEW_PKGS >/dev/null
    for d in $(comm -13 <(echo "$DEBS0" | sort) <(ls /var/cache/apt/archives | sort)); do
        [[ $d == *.deb ]] && rm -f "/var/cache/apt/archives/$d"; done
    # useradd/userdel leave /etc/passwd- etc. holding the state before their last change: put back the
    # copies from the start wherever the file itself is back to what it was
    for f in $ID_FILES; do
        b=$WORK/before/${f##*/}; same "$f" "$b" || continue
        if [ -e "$b-" ]; then cp -p "$b-" "$f-"; else rm -f "$f-"; fi
    done
    rm -rf "$CTL"

    echo "== machine as found?"
    local diffs=""
    d=$(diff <(echo "$PKGS0" | sort) <(packages | sort) | grep '^[<>]') && diffs+="packages: $d"$'\n'
    for f in $ID_FILES; do
        same "$f" "$WORK/before/${f##*/}" && same "$f-" "$WORK/before/${f##*/}-" || diffs+="changed: $f or $f-"$'\n'
    done
    getent passwd "$TRY_USER" >/dev/null && diffs+="user $TRY_USER still exists"$'\n'
    d=$(diff <(echo "$MODES0") <(modes) | grep '^[<>]') && diffs+="modes: $d"$'\n'
    d=$(pgrep -a -f -- "$WORK/"; [ -n "$TRY_UID" ] && pgrep -a -U "$TRY_UID"; [ -n "$SSHD_PID" ] && ps -o pid=,args= -p "$SSHD_PID")
    [ -n "$d" ] && diffs+="processes left: $d"$'\n'
    d=$(comm -13 <(echo "$TMP0" | sort) <(ray_tmp | sort)) && [ -n "$d" ] && diffs+="/tmp: $d"$'\n'
    [ "$RUN_SSHD0" = "$([ -e /run/sshd ] && echo yes || echo no)" ] || diffs+="/run/sshd differs"$'\n'
    [ -n "$TRY_UID" ] && d=$(find /tmp /var/tmp /dev/shm /run -xdev -uid "$TRY_UID" -not -path "$WORK/*" 2>/dev/null | head) &&
        [ -n "$d" ] && diffs+="files of uid $TRY_UID: $d"$'\n'
    # A socket lives only as long as a process holds it: with none of this run's processes left, a listening
    # socket that came or went meanwhile is another user's (their holders are shown).
    diff <(echo "$LISTEN0") <(listening) | grep '^[<>]' | while read -r mark a; do
        echo "  other users' socket $([ "$mark" = ">" ] && echo "opened" || echo "closed") meanwhile: $a" \
             "$(ss -ltnpH "sport = :${a##*:}" | awk '{print $6}')"
    done
    rm -rf "$WORK"; [ -e "$WORK" ] && diffs+="$WORK still there"$'\n'
    local found=yes; [ -n "$diffs" ] && found=no && printf '%s' "$diffs"

    echo "== summary"
    for s in "${ORDER[@]}"; do printf '  %-15s %s\n' "$s" "${SECS[$s]}"; done
    echo "  trials: ${TRIALS:-none}"
    echo "  machine as found: $found"
    [ "$found" = yes ] || RC=1
    echo "try_onprem: $([ "$RC" = 0 ] && echo PASSED || echo FAILED)"
    exit "$RC"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

step() {  # step NAME CMD...: run CMD, print and remember its seconds; CMD's exit status is the step's
    local name=$1 t0=$EPOCHREALTIME rc=0; shift
    echo "== $name"
    "$@" || rc=$?
    SECS[$name]="$(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}") s$([ $rc = 0 ] || echo ", FAILED (exit $rc)")"
    ORDER+=("$name")
    echo "== $name: ${SECS[$name]}"
    return "$rc"
}
free_ports() {  # N distinct free ports on 127.0.0.1 (all bound at once while picking)
    "$VENV/bin/python" -c "import socket; s = [socket.socket() for _ in range($1)]
for x in s: x.bind(('$LO', 0))
print(*(x.getsockname()[1] for x in s))"
}

# ---- the throwaway user ----------------------------------------------------------------------------
useradd -m -s /bin/bash "$TRY_USER"; MADE_USER=1; TRY_UID=$(id -u "$TRY_USER")
usermod -p '*' "$TRY_USER"  # useradd's "!" password locks the account, and without PAM sshd refuses it
# The venv's interpreter may sit below a folder ssnftry cannot pass (here pyenv's, under /root, mode 700):
# an ACL entry lets ssnftry alone pass it (not list it), removed at cleanup.
d=$PYDIR
while [ "$d" != / ]; do [ $((0$(stat -c %a "$d") & 1)) = 1 ] || BLOCKED+=("$d"); d=$(dirname "$d"); done

# ---- packages: rsync (ray up syncs file_mounts), acl if needed; sshd's .deb unpacked (see the header)
export DEBIAN_FRONTEND=noninteractive
MISSING=$(command -v rsync >/dev/null || echo rsync; [ ${#BLOCKED[@]} = 0 ] || command -v setfacl >/dev/null || echo acl)
if [ -n "$MISSING" ]; then
    plan=$(apt-get install -s -q --no-install-recommends $MISSING)
    if grep -qE '^(Inst [^ ]+ \[|Remv)' <<<"$plan"; then  # an upgrade or a removal: no purge could undo it
        grep -E '^(Inst|Remv)' <<<"$plan"; fail "installing $MISSING would upgrade or remove packages"
    fi
    apt-get install -y -q --no-install-recommends $MISSING >/dev/null
    NEW_PKGS=$(comm -13 <(echo "$PKGS0" | cut -d' ' -f1 | sort) <(packages | cut -d' ' -f1 | sort) | tr '\n' ' ')
    echo "installed: $NEW_PKGS"
fi
SSHD=/usr/sbin/sshd
if [ ! -x "$SSHD" ]; then
    mkdir "$WORK/debs" && chmod 755 "$WORK/debs"
    (cd "$WORK/debs" && apt-get download -q openssh-server libwrap0 2>&1 | { grep -v unsandboxed || true; })
    for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/pkg"; done
    SSHD=$WORK/pkg/usr/sbin/sshd
fi
SSHD_CMD=(env LD_LIBRARY_PATH="$WORK/pkg/usr/lib/x86_64-linux-gnu" "$SSHD")  # libwrap0, if not installed
for d in "${BLOCKED[@]}"; do echo "ACL: $TRY_USER may pass $d"; setfacl -m "u:$TRY_USER:x" "$d"; done
runuser -u "$TRY_USER" -- "$VENV/bin/python" -c '' || fail "$TRY_USER cannot run $VENV/bin/python"

# ---- ssnftry's environment, its key, its sshd on 127.0.0.1:<free port> ------------------------------
HOME_T=$(getent passwd "$TRY_USER" | cut -d: -f6)
chmod 711 "$WORK"  # ssnftry may pass through $WORK (data, storage, its TMPDIR) but not list it
mkdir -m 700 "$WORK/key" "$WORK/rt"
mkdir -m 700 "$WORK/t" "$WORK/store"; chown "$TRY_USER:" "$WORK/t" "$WORK/store"
# Ray runs every remote command as `bash --login -c -i 'source ~/.bashrc; ...'`: the venv and the quiet
# environment go in ssnftry's own ~/.bashrc. TMPDIR keeps its Ray session, lock files and torch caches
# in $WORK instead of /tmp/ray, which other users' Ray shares.
cat >"$HOME_T/.bashrc" <<EOF
source $VENV/bin/activate
export $QUIET
export TMPDIR=$WORK/t
EOF
chown "$TRY_USER:" "$HOME_T/.bashrc"
ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$WORK/key/id_ed25519"
install -d -m 700 -o "$TRY_USER" -g "$TRY_USER" "$HOME_T/.ssh"
install -m 600 -o "$TRY_USER" -g "$TRY_USER" "$WORK/key/id_ed25519.pub" "$HOME_T/.ssh/authorized_keys"
for path in "$VENV/bin/python" "$REPO/tune_main.py" "$REPO/ssnf/__init__.py" "$REPO/search_spaces"; do
    runuser -u "$TRY_USER" -- test -r "$path" || fail "$TRY_USER cannot read $path"
done

read -r SSH_PORT GCS_PORT AGENT_PORT CLIENT_PORT AS_PORT DB_PORT <<<"$(free_ports 6)"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key/host_ed25519"
cat >"$WORK/sshd_config" <<EOF
ListenAddress $LO
Port $SSH_PORT
HostKey $WORK/key/host_ed25519
PidFile $WORK/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $TRY_USER
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
EOF
getent passwd sshd >/dev/null || { useradd --system -d /run/sshd -s /usr/sbin/nologin sshd; MADE_SSHD_USER=1; }
[ -e /run/sshd ] || mkdir -m 755 /run/sshd  # sshd's privilege separation dir
"${SSHD_CMD[@]}" -t -f "$WORK/sshd_config"
"${SSHD_CMD[@]}" -D -f "$WORK/sshd_config" -E "$WORK/sshd.log" & SSHD_PID=$!  # env execs sshd: same pid
for _ in $(seq 50); do listening | grep -qx "$LO:$SSH_PORT" && break; sleep 0.1; done
listening | grep -qx "$LO:$SSH_PORT" || { cat "$WORK/sshd.log"; fail "sshd did not start"; }

# Ray's ssh runner has no port option, only ssh_proxy_command: a relay from ssh's stdin/stdout to the port.
# One word, no quotes, as ray also hands it to rsync inside --rsh.
cat >"$WORK/relay" <<EOF
#!$VENV/bin/python
import os, socket, threading
sock = socket.create_connection(("$LO", $SSH_PORT))
def upstream():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
EOF
chmod 755 "$WORK/relay"
SSH_OPTS=(-i "$WORK/key/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
          -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ProxyCommand="$WORK/relay")
found=$(ssh "${SSH_OPTS[@]}" "$TRY_USER@$LO" "bash --login -c -i 'source ~/.bashrc; command -v python ray'" 2>/dev/null) ||
    { cat "$WORK/sshd.log"; fail "ssh $TRY_USER@$LO through the relay failed"; }
echo "ssh $TRY_USER@$LO, login shell as ray runs it, finds:" $found
[ "$found" = "$VENV/bin/python"$'\n'"$VENV/bin/ray" ] || fail "ssnftry's login shell does not find the venv"
rsync -a --rsh "ssh ${SSH_OPTS[*]}" "$REPO/tune_main.py" "$TRY_USER@$LO:rsync-probe.py"
ssh "${SSH_OPTS[@]}" "$TRY_USER@$LO" "cmp -s rsync-probe.py $REPO/tune_main.py && rm rsync-probe.py"
echo "ssh and rsync through the relay: ok"

# ---- the cluster config for this machine: a copy of onprem.yaml, changed with yaml ------------------
"$VENV/bin/python" - "$REPO/cluster/onprem.yaml" "$WORK" <<EOF
import sys, yaml
src, work = sys.argv[1:]
config = yaml.safe_load(open(src))
yaml.safe_dump(config, open(f"{work}/onprem.original.yaml", "w"), sort_keys=False)  # same layout, for the diff
config["cluster_name"] = "$NAME"
config["provider"].update(head_ip="$LO", worker_ips=[])
config["min_workers"] = config["max_workers"] = 0
config["auth"] = {"ssh_user": "$TRY_USER", "ssh_private_key": f"{work}/key/id_ed25519",
                  "ssh_proxy_command": f"{work}/relay"}
# The venv exists (ssnftry's ~/.bashrc activates it) and the sweep needs no weights (pretrained=false):
# setup only checks that the login shell finds the project.
config["setup_commands"] = ["python -c 'import ssnf, search_spaces, ray; print(ray.__version__)'"]
config["head_setup_commands"] = []
config["head_start_ray_commands"] = [
    "ray stop",
    # Ray's fixed ports (agent 52365, client server 10001, metrics 44217 and 44227) would clash with
    # other Ray clusters on this machine: free ones instead
    "export $QUIET AUTOSCALER_METRIC_PORT=$AS_PORT DASHBOARD_METRIC_PORT=$DB_PORT; ray start --head --node-ip-address=$LO --port=$GCS_PORT --num-cpus=2"
    " --include-dashboard=false --dashboard-agent-listen-port=$AGENT_PORT --ray-client-server-port=$CLIENT_PORT"
    " --autoscaling-config=~/ray_bootstrap_config.yaml"]
yaml.safe_dump(config, open(f"{work}/onprem.yaml", "w"), sort_keys=False)
EOF
echo "== cluster/onprem.yaml -> the copy for this machine"
diff -u "$WORK/onprem.original.yaml" "$WORK/onprem.yaml" | tail -n +3 || true

# ---- demo data, readable by ssnftry ----------------------------------------------------------------
"$VENV/bin/ssnf" data demo --root "$WORK/data" --categories weave,washer --size 64 --n-train 20 \
    --n-test-good 6 --n-per-defect 3 >/dev/null
chmod -R a+rX "$WORK/data"

# ---- the timed steps --------------------------------------------------------------------------------
UP=1; step "ray up" timeout 600 "${RAY[@]}" up -y --no-config-cache "$WORK/onprem.yaml"
echo "listening sockets of $TRY_USER's processes (all must be on $LO):"
held=$(ss -ltunpH | grep -E "pid=($(pgrep -d'|' -u "$TRY_USER")),") || true
echo "$held" | awk '{print "  " $1, $5, $7}'
# (a dual-stack socket shows 127.0.0.1 as [::ffff:127.0.0.1])
[ -z "$(echo "$held" | awk 'NF && $5 !~ /^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):/')" ] || fail "$TRY_USER listens beyond $LO"
SWEEP=(--address auto --data-root "$WORK/data" --categories weave,washer --num-samples 2 --max-epochs 2
       --scheduler none --storage "$WORK/store" --name onprem --set data.image_size=64
       --set backbone.pretrained=false --set data.val_fraction=0.25 --set train.batch_size=4)
SUBMIT_RC=0
step "ray submit" timeout 1200 "${RAY[@]}" submit --no-config-cache "$WORK/onprem.yaml" "$REPO/tune_main.py" -- \
    "${SWEEP[@]}" || SUBMIT_RC=$?
if [ "$SUBMIT_RC" != 0 ]; then
    # `ray submit` runs ~/tune_main.py, so ~ comes first on sys.path: what does `import ssnf` find there?
    probe="import ssnf; print(ssnf.__file__, *ssnf.__path__)"
    where=$(ssh "${SSH_OPTS[@]}" "$TRY_USER@$LO" "cd ~ && $VENV/bin/python -c '$probe'")
    echo "ray submit failed; in ~ of the head, 'import ssnf' finds: $where"
    [[ $where == None* ]] && echo "(__file__ None: a folder ~/ssnf shadows" \
        "the installed package as a namespace package, which has no __version__)"
    # The rest is still worth testing: the same sweep, run from the checkout ~/ssnf-src with `ray exec`.
    [ -e "$WORK/store/onprem" ] ||
        step "ray exec sweep" timeout 1200 "${RAY[@]}" exec --no-config-cache "$WORK/onprem.yaml" \
            "cd ~/ssnf-src && python tune_main.py ${SWEEP[*]}"
fi
step "ray exec" timeout 120 "${RAY[@]}" exec --no-config-cache "$WORK/onprem.yaml" 'ray status'
check_parquet() {
    "$VENV/bin/python" - "$WORK/store/onprem/results/trials" <<'EOF' | tee "$WORK/parquet.txt"
import sys
import pandas as pd
trials = pd.read_parquet(sys.argv[1])
print(trials[["category", "trial_id", "status", "node_id", "node_ip"]].to_string(index=False))
ok = len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "completed").all()
print(f"{len(trials)} rows, unique trial ids: {trials['trial_id'].is_unique}, "
      f"statuses: {trials['status'].value_counts().to_dict()}, nodes: {trials['node_id'].nunique()}")
sys.exit(0 if ok else 1)
EOF
}
step "parquet" check_parquet
TRIALS=$(tail -n 1 "$WORK/parquet.txt")
step "ray down" timeout 300 "${RAY[@]}" down -y "$WORK/onprem.yaml"; DOWN=1
[ "$SUBMIT_RC" = 0 ] && RC=0
