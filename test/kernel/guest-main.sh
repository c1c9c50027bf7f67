#!/bin/bash
# Runs inside the qemu guest as root (started by guest-pid1.sh, bounded by
# GUEST_TIMEOUT). The root file system is the host's, read-only over 9p;
# /run, /tmp, /root are tmpfs. Layout:
#   /run/kt/project  the project checkout (read-only)
#   /run/kt/kroot    the extracted Debian kernel tree (modules, read-only)
#   /run/kt/results  writable share: evidence + summary.txt
#
# Brings up soft-iWARP (siw0 on a dummy netdev, 192.0.2.1/24), then runs the
# scenario groups listed in KT_SCENARIOS (see scripts/test-kernel.sh). Every
# scenario writes its evidence under results/<group>/ and one line to
# results/summary.txt:  PASS|FAIL <group>.<scenario>: <details>
set -u
KT=/run/kt
P=$KT/project
R=$KT/results
K=$KT/kroot
# shellcheck disable=SC1091
. "$R/config.env"
SUM=$R/summary.txt
ADDR=192.0.2.1
NETDEV=kt0
CTL=/run/iwpmd.sock
TRACE=sendmsg,recvmsg,sendto,recvfrom,sendmmsg,recvmmsg
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE=${KT_NODE:-node}
[ -x "$NODE" ] || NODE=node
export PATH="$(dirname "$NODE"):$PATH"
DECODE="$NODE $HERE/decode-strace.mjs"
IWPMCTL="$NODE $P/dist/cli/iwpmctl.js --control $CTL"
SCENARIOS=${KT_SCENARIOS:-nodaemon ref ours compare quirks late-reply late-reply-live}
CMTIME_RUNS=${KT_CMTIME_RUNS:-4}
CMTIME_CONNS=${KT_CMTIME_CONNS:-64}
T0=$(date +%s.%N)

# ------------------------------------------------------------------ helpers
say() { printf '[%s] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%7.2f", a-b}')" "$*"; }
result() { # result PASS|FAIL|SKIP|INFO name details...
  local st=$1 name=$2; shift 2
  printf '%s %s: %s\n' "$st" "$name" "$*" >> "$SUM"
  say "$st $name: $*"
}
kmsg() { echo "$*" > /dev/kmsg; }
mark() { kmsg "kt-mark: $1"; }
dmesg_since() { dmesg | awk -v m="kt-mark: $1" 'f{print} index($0,m){f=1}'; }
# state of a pid: empty when gone; "Z" for a zombie
pstate() { local l; read -r l 2>/dev/null < "/proc/$1/stat" || return 0; l=${l##*) }; echo "${l%% *}"; }
alive() { local s; s=$(pstate "$1"); [ -n "$s" ] && [ "$s" != Z ]; }
# deadlines are wall-clock (a poll can take long in a loaded TCG guest)
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
# wait_exit PID SECONDS: waits for a background child; sets WRC (exit code or "timeout")
wait_exit() {
  local pid=$1 end=$(( $(now_ms) + $2 * 1000 ))
  while alive "$pid"; do
    if [ "$(now_ms)" -ge "$end" ]; then WRC=timeout; return 1; fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null
  WRC=$?
  return 0
}
# stop_bg PID [SECONDS]: SIGTERM, then SIGKILL; sets WRC
stop_bg() {
  local pid=$1 t=${2:-3}
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    if ! wait_exit "$pid" "$t"; then
      kill -KILL "$pid" 2>/dev/null
      wait_exit "$pid" 5
      WRC="killed($WRC)"
    fi
  else
    wait "$pid" 2>/dev/null
    WRC=$?
  fi
}
# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds or time is up
wait_for() {
  local end=$(( $(now_ms) + $1 * 1000 )); shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.2
  done
  return 0
}
count() { grep -c -- "$1" "$2" 2>/dev/null || true; }
dyndbg() { echo "module iw_cm $1p" > /sys/kernel/debug/dynamic_debug/control 2>/dev/null; }
# kernel error lines that a healthy run never produces (iwpm/iw_cm/siw + oopses)
ERR_RE='Unable to send|Timeout [0-9]+ sec|Could not find a matching|Incorrect|Invalid|Insufficient|Unregistered port mapper|Received a Reject|Down level|Sockaddr family|Unable to parse|BUG|WARNING|Oops|Call Trace|general protection'
kerrors() { grep -E "$ERR_RE" "$1" 2>/dev/null | grep -v 'kt-mark' || true; }

listening() { rdma res show cm_id 2>/dev/null | grep -E "state LISTEN" | grep -q -- "$1:$2"; }
cmids() { rdma res show cm_id 2>/dev/null | grep -c 'state' || true; }

# --------------------------------------------------------------- the daemons
DPID="" SPID="" DKIND=""
# The daemon's pid under strace (strace's child), waited for up to 5 s; empty if none.
traced_child() {
  local i pid=""
  for i in $(seq 100); do
    pid=$(pgrep -P "$1" | head -1)
    [ -n "$pid" ] && break
    sleep 0.05
  done
  echo "$pid"
}

# start_daemon KIND DIR TAG [strace]: DPID = daemon, SPID = what we wait on
start_daemon() {
  local kind=$1 dir=$2 tag=$3 tr=${4:-strace} level=${5:-debug}
  local cmd
  DKIND=$kind
  case $kind in
    ours) cmd=("$NODE" ${KT_NODE_FLAGS:-} "$P/dist/cli/iwpmd.js" -s --log-level "$level" --control "$CTL") ;;
    ref)  cmd=(/usr/sbin/iwpmd -s) ;;
  esac
  mkdir -p "$dir"
  if [ "$tr" = count ]; then
    # syscall counts only (strace -c): written when the daemon exits
    strace -f -c -o "$dir/strace-count-$tag.txt" "${cmd[@]}" > "$dir/daemon-$tag.log" 2>&1 &
    SPID=$!
    DPID=$(traced_child "$SPID")
  elif [ "$tr" = strace ]; then
    strace -f --seccomp-bpf -tt -yy -s 32 ${KT_STRACE_OPTS:-} -e trace=${KT_TRACE_SET:-$TRACE} -e read=all -e write=all \
      -o "$dir/strace-$tag.txt" "${cmd[@]}" > "$dir/daemon-$tag.log" 2>&1 &
    SPID=$!
    DPID=$(traced_child "$SPID")
  else
    "${cmd[@]}" > "$dir/daemon-$tag.log" 2>&1 &
    SPID=$!
    DPID=$SPID
  fi
  say "started $kind daemon ($tag): pid ${DPID:-?} (strace/wrapper $SPID)"
  echo "${DPID:-}" > "$dir/daemon-$tag.pid"
}
# daemon_ready MARK: HELLO handled by the kernel (+ control socket for ours)
daemon_ready() {
  if [ -z "$DPID" ] || ! alive "$DPID"; then DAEMON_GONE=1; return 0; fi
  DAEMON_GONE=0
  if [ "$DKIND" = ours ]; then [ -S "$CTL" ] || return 1; fi
  return 0
}
# wait_ready MARK [SECONDS]: 0 when the daemon is up and the kernel has its HELLO
wait_ready() {
  wait_for "${2:-30}" daemon_ready "$1" || return 1
  [ "$DAEMON_GONE" = 0 ]
}
stop_daemon() {
  if [ -n "$DPID" ] && alive "$DPID"; then kill -TERM "$DPID" 2>/dev/null; fi
  if [ -n "$SPID" ]; then stop_bg "$SPID" 8; DRC=$WRC; else DRC=none; fi
  DPID="" SPID=""
  rm -f "$CTL"
}
# mappings DIR TAG: our daemon's mapping table as JSON (saved) -> prints "N <compact list>"
mappings() {
  local dir=$1 tag=$2
  timeout 20 $IWPMCTL -j show mappings > "$dir/mappings-$tag.json" 2> "$dir/mappings-$tag.err"
  echo "rc=$?" >> "$dir/mappings-$tag.err"
  node -e '
    const fs = require("fs");
    let j; try { j = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch (e) { console.log("ERR", e.message); process.exit(0); }
    let arr = Array.isArray(j) ? j : null;
    if (!arr && j && typeof j === "object") for (const v of Object.values(j)) if (Array.isArray(v)) { arr = v; break; }
    if (!arr) { console.log("ERR no array in", JSON.stringify(j).slice(0, 200)); process.exit(0); }
    console.log(arr.length, JSON.stringify(arr));
  ' "$dir/mappings-$tag.json"
}
# stats DIR TAG: our daemon's counters (saved as JSON) -> prints "key=value ..."
stats() {
  local dir=$1 tag=$2
  timeout 20 $IWPMCTL -j show stats > "$dir/stats-$tag.json" 2> "$dir/stats-$tag.err"
  node -e '
    const fs = require("fs");
    let j; try { j = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch (e) { console.log("ERR=" + JSON.stringify(e.message)); process.exit(0); }
    const d = j.daemon || {}, p = j.peer || {}, out = [];
    for (const [k, v] of Object.entries(d.byOp || {})) out.push(`op_${k}=${v}`);
    for (const k of ["repliesSent", "remoteInfoSent", "queriesAccepted", "queriesRejected", "queriesTimedOut", "mapinfoRecords", "kernelErrors", "recvErrors", "invalid", "lateDropped"])
      if (k in d) out.push(`${k}=${d[k]}`);
    for (const k of ["rxReq", "rxAcc", "rxAck", "rxRej", "txReq", "txReqRetransmit", "txAcc", "txAccRetransmit", "txAccDuplicateReq", "txAck", "srttMs", "rtoMs"])
      if (k in p) out.push(`peer_${k}=${p[k]}`);
    console.log(out.join(" "));
  ' "$dir/stats-$tag.json"
}
statv() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; } # statv "$STATS" key
decode() { # decode DIR TAG -> DIR/nl-TAG.txt
  [ -f "$1/strace-$2.txt" ] && $DECODE "$1/strace-$2.txt" > "$1/nl-$2.txt" 2> "$1/nl-$2.err"
}
nlc() { count "$1" "$2"; } # nlc PATTERN FILE

# ------------------------------------------------------------------- set-up
setup() {
  local d=$R/setup
  mkdir -p "$d"
  # modprobe on this root has no /lib/modules: wrap it for the kernel's
  # request_module() calls too.
  cat > /run/kt-modprobe <<EOF
#!/bin/sh
exec /sbin/modprobe -d $K "\$@"
EOF
  chmod 755 /run/kt-modprobe
  echo /run/kt-modprobe > /proc/sys/kernel/modprobe
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  hostname kt-guest 2>/dev/null
  # rdma-core's iwpmd logs to syslog
  /bin/busybox syslogd -n -O "$R/syslog.txt" &
  SYSLOG_PID=$!
  local ok=1 m
  for m in ib_core iw_cm rdma_cm ib_uverbs rdma_ucm siw dummy; do
    /run/kt-modprobe "$m" >> "$d/modprobe.txt" 2>&1 || { ok=0; echo "modprobe $m failed" >> "$d/modprobe.txt"; }
  done
  dyndbg +
  ip link set lo up
  ip link add "$NETDEV" type dummy && ip link set "$NETDEV" address 02:00:00:00:00:01 \
    && ip addr add "$ADDR/24" dev "$NETDEV" && ip link set "$NETDEV" up || ok=0
  rdma link add siw0 type siw netdev "$NETDEV" || ok=0
  wait_for 10 sh -c 'rdma link show siw0/1 | grep -q ACTIVE' || ok=0
  { uname -a; lsmod; ip addr; rdma link show; rdma dev show; ibv_devices; } > "$d/env.txt" 2>&1
  if [ "$ok" = 1 ]; then
    result PASS setup "siw0 on $NETDEV ($ADDR) ACTIVE; kernel $(uname -r); modules ib_core iw_cm rdma_cm ib_uverbs rdma_ucm siw loaded via modprobe -d"
  else
    result FAIL setup "could not bring up siw (see setup/)"
  fi
  [ "$ok" = 1 ]
}

# ---------------------------------------------------------- rping scenario
# rping_pair DIR TAG PORT COUNT: server + client; writes DIR/rping-TAG-{server,client}.txt,
# sets RP_CRC RP_SRC RP_PINGS
rping_pair() {
  local dir=$1 tag=$2 port=$3 n=$4 lw=${5:-15} ct=${6:-30} spid cpid
  rping -s -a "$ADDR" -p "$port" -C "$n" -v > "$dir/rping-$tag-server.txt" 2>&1 &
  spid=$!
  if ! wait_for "$lw" listening "$ADDR" "$port"; then
    echo "server not listening after $lw s" >> "$dir/rping-$tag-server.txt"
  fi
  timeout -s TERM -k 5 "$ct" rping -c -a "$ADDR" -p "$port" -C "$n" -v -V > "$dir/rping-$tag-client.txt" 2>&1 &
  cpid=$!
  wait_exit "$cpid" $((ct + 10)) || { kill -KILL "$cpid" 2>/dev/null; wait_exit "$cpid" 5; }
  RP_CRC=$WRC
  wait_exit "$spid" 15 || stop_bg "$spid"
  RP_SRC=$WRC
  RP_PINGS=$(grep -c 'ping data:' "$dir/rping-$tag-client.txt" 2>/dev/null || true)
}

# scenario_startup GROUP KIND: start the daemon, HELLO/ABI 4
scenario_startup() {
  local g=$1 kind=$2 d=$R/$1
  mkdir -p "$d"
  mark "$g.startup"
  start_daemon "$kind" "$d" 1
  if [ -z "$DPID" ] || ! wait_ready "$g.startup"; then
    dmesg_since "$g.startup" > "$d/dmesg-startup.txt"
    result FAIL "$g.startup" "daemon not ready within 30 s (pid ${DPID:-none}; see $g/daemon-1.log, dmesg-startup.txt)"
    return 1
  fi
  sleep 1
  dmesg_since "$g.startup" > "$d/dmesg-startup.txt"
  cp "$d/strace-1.txt" "$d/strace-startup.txt" 2>/dev/null
  decode "$d" startup
  local f=$d/nl-startup.txt ok=1 why=""
  grep -q 'Using ABI version 4' "$d/dmesg-startup.txt" || { ok=0; why+=" no 'Using ABI version 4' in dmesg;"; }
  grep -Eq '^\S+ out nl  0x0808 HELLO .*\[1\]=u16:4' "$f" || { ok=0; why+=" no HELLO{abi 4} sent;"; }
  grep -Eq '^\S+ in  nl  0x0808 HELLO .*\[1\]=u16:4' "$f" || { ok=0; why+=" no HELLO{abi 4} reply from the kernel;"; }
  grep -Eq '^\S+ out nl  0x0806 MAPINFO .*"iWarpPortMapperUser"' "$f" || { ok=0; why+=" no MAPINFO request;"; }
  if [ "$kind" = ours ]; then
    grep -Eiq 'abi[^0-9]{0,20}4|version[^0-9]{0,5}4' "$d/daemon-1.log" || { ok=0; why+=" daemon log does not mention ABI 4;"; }
    timeout 20 $IWPMCTL -j show stats > "$d/stats-startup.json" 2>&1 || { ok=0; why+=" iwpmctl show stats failed;"; }
  fi
  alive "$DPID" || { ok=0; why+=" daemon exited;"; }
  local errs; errs=$(kerrors "$d/dmesg-startup.txt")
  [ -z "$errs" ] || { ok=0; why+=" kernel errors: $errs;"; }
  STARTUP_OK=$ok STARTUP_WHY=$why
  # the kernel registers the daemon on the first listen: checked in the rping
  # scenario, which reports the verdict for startup too.
  return 0
}

# scenario_rping GROUP KIND: one rping exchange with REG_PID/ADD/QUERY/REMOTE_INFO/REMOVE
scenario_rping() {
  local g=$1 kind=$2 d=$R/$1 ok=1 why="" tcpd=""
  mark "$g.rping"
  if command -v tcpdump >/dev/null; then
    tcpdump -i lo -nn -U -Z root -w "$d/udp3935.pcap" udp port 3935 > "$d/tcpdump.txt" 2>&1 &
    tcpd=$!
    wait_for 10 grep -q 'listening on' "$d/tcpdump.txt"
  fi
  rping_pair "$d" rping 7174 3
  sleep 1
  local mp="" st=""
  [ "$kind" = ours ] && { mp=$(mappings "$d" after-rping); st=$(stats "$d" after-rping); }
  [ -n "$tcpd" ] && { stop_bg "$tcpd"; tcpdump -r "$d/udp3935.pcap" -nn -x > "$d/udp3935.txt" 2>&1; }
  dmesg_since "$g.rping" > "$d/dmesg-rping.txt"
  local k=$d/dmesg-rping.txt
  # outcome seen by the kernel and the applications
  [ "$RP_CRC" = 0 ] || { ok=0; why+=" client exit $RP_CRC;"; }
  [ "$RP_SRC" = 0 ] || { ok=0; why+=" server exit $RP_SRC;"; }
  [ "$RP_PINGS" = 3 ] || { ok=0; why+=" client printed $RP_PINGS/3 pings;"; }
  local kreg kadd kq kri krm cids
  kreg=$(count 'iWarp Port Mapper (pid = ' "$k")
  kadd=$(count 'add_mapping: Local sockaddr: IPV4 192.0.2.1: 7174' "$k")
  kq=$(count 'query_mapping: Remote sockaddr: IPV4 192.0.2.1: 7174' "$k")
  kri=$(count 'remote_info: Local sockaddr: IPV4 192.0.2.1: 7174' "$k")
  krm=$(count 'remove_mapping: Local sockaddr' "$k")
  cids=$(cmids)
  local kpid; kpid=$(grep -o 'iWarp Port Mapper (pid = [0-9]*' "$k" | head -1 | grep -o '[0-9]*$')
  [ "$kreg" -ge 1 ] || { ok=0; why+=" kernel did not register the daemon (no 'iWarp Port Mapper (pid = N) is available');"; }
  grep -q 'Multicasting a nlmsg' "$k" || { ok=0; why+=" no REG_PID multicast in dmesg;"; }
  [ "$kadd" -ge 1 ] || { ok=0; why+=" no kernel add_mapping for the listener;"; }
  [ "$kq" -ge 1 ] || { ok=0; why+=" no kernel query_mapping;"; }
  [ "$kri" -ge 1 ] || { ok=0; why+=" no kernel remote_info;"; }
  [ "$krm" -ge 2 ] || { ok=0; why+=" $krm kernel remove_mapping (want 2: client + listener);"; }
  [ "$cids" = 0 ] || { ok=0; why+=" $cids cm_ids left;"; }
  local errs; errs=$(kerrors "$k")
  [ -z "$errs" ] || { ok=0; why+=" kernel errors: $(echo "$errs" | head -3 | tr '\n' '|');"; }
  # what the daemon saw (strace of its sockets)
  decode "$d" 1
  local f=$d/nl-1.txt
  local nreg nadd nq nrm nri nreq nacc nack
  nreg=$(nlc ' in  nl  0x0800 REG_PID' "$f")
  nadd=$(grep -E ' in  nl  0x0801 ADD_MAPPING .*\[2\]=192\.0\.2\.1:7174 \[3\]=u32:1' "$f" | wc -l)
  nq=$(grep -E ' in  nl  0x0802 QUERY_MAPPING .*\[3\]=192\.0\.2\.1:7174 \[4\]=u32:1' "$f" | wc -l)
  nrm=$(nlc ' in  nl  0x0803 REMOVE_MAPPING' "$f")
  nri=$(nlc ' out nl  0x0804 REMOTE_INFO' "$f")
  nreq=$(nlc ' udp REQ len=64' "$f")
  nacc=$(nlc ' udp ACC len=48' "$f")
  nack=$(nlc ' udp ACK len=48' "$f")
  [ "$nreg" -ge 1 ] || { ok=0; why+=" daemon received no REG_PID;"; }
  grep -Eq ' out nl  0x0800 REG_PID ' "$f" || { ok=0; why+=" daemon sent no REG_PID reply;"; }
  [ "$nadd" -ge 1 ] || { ok=0; why+=" daemon received no ADD_MAPPING{192.0.2.1:7174, flags NO_PORT_MAP};"; }
  [ "$nq" -ge 1 ] || { ok=0; why+=" daemon received no QUERY_MAPPING{remote 192.0.2.1:7174, flags NO_PORT_MAP};"; }
  [ "$nri" -ge 1 ] || { ok=0; why+=" daemon sent no REMOTE_INFO;"; }
  [ "$nrm" -ge 2 ] || { ok=0; why+=" daemon received $nrm REMOVE_MAPPING (want 2);"; }
  # each UDP message is seen twice (sent and received by the same daemon)
  [ "$nreq" -ge 2 ] && [ "$nacc" -ge 2 ] && [ "$nack" -ge 2 ] \
    || { ok=0; why+=" UDP exchange incomplete (REQ $nreq ACC $nacc ACK $nack, want >= 2 each: out+in);"; }
  if [ "$kind" = ours ]; then
    local n=${mp%% *}
    [ "$n" = 0 ] || { ok=0; why+=" mapping table not empty after rping: $mp;"; }
    local L=$d/daemon-1.log
    grep -Eiq 'reg.?pid' "$L" || { ok=0; why+=" daemon log has no REG_PID line;"; }
    grep -Eiq 'add' "$L" || { ok=0; why+=" daemon log has no ADD line;"; }
    grep -Eiq 'query' "$L" || { ok=0; why+=" daemon log has no QUERY line;"; }
    grep -Eiq 'remov' "$L" || { ok=0; why+=" daemon log has no REMOVE line;"; }
    # the daemon's own counters (iwpmctl show stats)
    local c
    for c in op_reg_pid:1 op_add:1 op_query:1 op_remove:2 remoteInfoSent:1 queriesAccepted:1 peer_rxReq:1 peer_rxAcc:1 peer_rxAck:1; do
      local v; v=$(statv "$st" "${c%%:*}")
      [ -n "$v" ] && [ "$v" -ge "${c##*:}" ] || { ok=0; why+=" counter ${c%%:*}=${v:-missing} (want >= ${c##*:});"; }
    done
    alive "$DPID" || { ok=0; why+=" daemon died;"; }
  else
    alive "$DPID" || { ok=0; why+=" iwpmd died;"; }
  fi
  cat > "$d/outcome-rping.env" <<EOF
client_rc=$RP_CRC
server_rc=$RP_SRC
pings=$RP_PINGS
kernel_registered=$([ "$kreg" -ge 1 ] && echo yes || echo no)
kernel_add_listener=$kadd
kernel_query=$kq
kernel_remote_info=$kri
kernel_remove=$krm
kernel_errors=$(echo -n "$errs" | grep -c . || true)
cm_ids_left=$cids
nl_reg_pid_in=$nreg
nl_add_in=$nadd
nl_query_in=$nq
nl_remote_info_out=$nri
nl_remove_in=$nrm
EOF
  local detail="client/server rc $RP_CRC/$RP_SRC, $RP_PINGS pings; kernel: registered pid ${kpid:-?} (daemon pid $DPID), add=$kadd query=$kq remote_info=$kri remove=$krm, cm_ids left $cids; daemon nl: REG_PID=$nreg ADD(flags 1)=$nadd QUERY(flags 1)=$nq REMOTE_INFO=$nri REMOVE=$nrm; udp REQ/ACC/ACK=$nreq/$nacc/$nack${mp:+; mappings after: ${mp%% *}}${st:+; daemon counters: $st}"
  if [ "$ok" = 1 ]; then result PASS "$g.rping" "$detail"; else result FAIL "$g.rping" "$detail; problems:$why"; fi
  # start-up verdict (HELLO/ABI 4 + registration by the kernel)
  if [ "${STARTUP_OK:-0}" = 1 ] && [ "$kreg" -ge 1 ]; then
    result PASS "$g.startup" "HELLO{abi 4} -> kernel 'Using ABI version 4' + HELLO{4} reply; MAPINFO request sent; first listen: REG_PID multicast answered, kernel: 'iWarp Port Mapper (pid = ${kpid:-?}) is available'"
  else
    result FAIL "$g.startup" "${STARTUP_WHY:-} registered=$kreg"
  fi
}

# scenario_restart GROUP KIND: SIGKILL the daemon under a live connection, restart,
# MAPINFO replay, live connection continues, new connections work.
scenario_restart() {
  local g=$1 kind=$2 d=$R/$1 ok=1 why="" n=600 port=7180
  mark "$g.restart"
  rping -s -a "$ADDR" -p "$port" -C "$n" -V > "$d/restart-server.txt" 2>&1 &
  local spid=$!
  wait_for 15 listening "$ADDR" "$port" || why+=" server not listening;"
  stdbuf -oL rping -c -a "$ADDR" -p "$port" -C "$n" -v -V > "$d/restart-client.txt" 2>&1 &
  local cpid=$!
  wait_for 20 sh -c "[ \$(grep -c 'ping data:' '$d/restart-client.txt') -ge 5 ]" || why+=" client made no progress;"
  kill -STOP "$cpid"
  local p1; p1=$(grep -c 'ping data:' "$d/restart-client.txt")
  rdma res show cm_id > "$d/cm_id-before-kill.txt" 2>&1
  local mp_before="" mp_after="" mp_end=""
  [ "$kind" = ours ] && mp_before=$(mappings "$d" before-kill)
  # SIGKILL the daemon
  local old=$DPID
  kill -KILL "$DPID"
  wait_exit "$SPID" 10 || stop_bg "$SPID"
  say "daemon $old SIGKILLed (wrapper rc $WRC) with the connection up ($p1 pings so far)"
  rm -f "$CTL"
  sleep 0.5
  rdma res show cm_id > "$d/cm_id-after-kill.txt" 2>&1
  # restart
  mark "$g.restart.2"
  start_daemon "$kind" "$d" 2
  if ! wait_ready "$g.restart.2"; then
    ok=0; why+=" restarted daemon not ready;"
  fi
  # the replay is over when the kernel has had our MAPINFO_NUM answer
  sleep 2
  [ "$kind" = ours ] && mp_after=$(mappings "$d" after-restart)
  dmesg_since "$g.restart.2" > "$d/dmesg-replay.txt"
  # resume the live connection
  kill -CONT "$cpid"
  wait_exit "$cpid" 120 || { kill -KILL "$cpid"; wait_exit "$cpid" 5; }
  local crc=$WRC
  wait_exit "$spid" 20 || stop_bg "$spid"
  local src=$WRC
  local p2; p2=$(grep -c 'ping data:' "$d/restart-client.txt")
  sleep 1
  [ "$kind" = ours ] && mp_end=$(mappings "$d" after-live-end)
  # a new connection after the restart
  mark "$g.restart.3"
  rping_pair "$d" after-restart 7181 3
  sleep 1
  local mp_final=""
  [ "$kind" = ours ] && mp_final=$(mappings "$d" final)
  dmesg_since "$g.restart" > "$d/dmesg-restart.txt"
  dmesg_since "$g.restart.3" > "$d/dmesg-newconn.txt"
  decode "$d" 2
  local f=$d/nl-2.txt
  local nrec nnum_in nnum_out sendnum acknum
  nrec=$(nlc ' in  nl  0x0806 MAPINFO ' "$f")
  nnum_in=$(nlc ' in  nl  0x0807 MAPINFO_NUM' "$f")
  nnum_out=$(nlc ' out nl  0x0807 MAPINFO_NUM' "$f")
  sendnum=$(grep ' in  nl  0x0807 MAPINFO_NUM' "$f" | head -1 | grep -o '\[2\]=u32:[0-9]*' | cut -d: -f2)
  acknum=$(grep ' out nl  0x0807 MAPINFO_NUM' "$f" | head -1 | grep -o '\[3\]=u32:[0-9]*' | cut -d: -f2)
  grep ' in  nl  0x0806 MAPINFO ' "$f" > "$d/replayed-records.txt"
  # checks
  [ "$crc" = 0 ] || { ok=0; why+=" live client exit $crc;"; }
  [ "$src" = 0 ] || { ok=0; why+=" live server exit $src;"; }
  [ "$p2" = "$n" ] || { ok=0; why+=" live client printed $p2/$n pings;"; }
  [ "$p1" -lt "$n" ] || { ok=0; why+=" connection was not live during the kill ($p1 pings before);"; }
  [ "$nrec" -ge 2 ] || { ok=0; why+=" $nrec MAPINFO records replayed (want >= 2: listener + client);"; }
  grep -q "\[1\]=192.0.2.1:$port \[2\]=192.0.2.1:$port \[3\]=u32:1" "$d/replayed-records.txt" \
    || { ok=0; why+=" listener 192.0.2.1:$port not in the replay;"; }
  [ "$nnum_in" -ge 1 ] && [ "$nnum_out" -ge 1 ] || { ok=0; why+=" MAPINFO_NUM exchange missing ($nnum_in in, $nnum_out out);"; }
  [ -n "$sendnum" ] && [ "$sendnum" = "$acknum" ] || { ok=0; why+=" MAPINFO_NUM send $sendnum ack $acknum;"; }
  grep -q 'iWarp Port Mapper (pid = ' "$d/dmesg-replay.txt" || { ok=0; why+=" no 'is available' from iwpm_mapping_info_cb;"; }
  [ "$RP_CRC" = 0 ] && [ "$RP_SRC" = 0 ] && [ "$RP_PINGS" = 3 ] \
    || { ok=0; why+=" new connection after restart: rc $RP_CRC/$RP_SRC pings $RP_PINGS;"; }
  grep -q 'query_mapping: Remote sockaddr: IPV4 192.0.2.1: 7181' "$d/dmesg-newconn.txt" \
    || { ok=0; why+=" new connection was not mapped through the restarted daemon;"; }
  local errs; errs=$(kerrors "$d/dmesg-restart.txt")
  [ -z "$errs" ] || { ok=0; why+=" kernel errors: $(echo "$errs" | head -3 | tr '\n' '|');"; }
  if [ "$kind" = ours ]; then
    [ "${mp_before%% *}" = 2 ] || { ok=0; why+=" before kill: $mp_before (want 2 mappings);"; }
    [ "${mp_after%% *}" = 2 ] || { ok=0; why+=" after restart: $mp_after (want the 2 replayed mappings);"; }
    case "$mp_after" in *7180*) ;; *) ok=0; why+=" replayed table lacks port $port;" ;; esac
    [ "${mp_end%% *}" = 0 ] || { ok=0; why+=" after the live connection ended: $mp_end (want 0);"; }
    [ "${mp_final%% *}" = 0 ] || { ok=0; why+=" final: $mp_final (want 0);"; }
  fi
  alive "$DPID" || { ok=0; why+=" restarted daemon died;"; }
  cat > "$d/outcome-restart.env" <<EOF
live_client_rc=$crc
live_server_rc=$src
live_pings=$p2/$n
replayed_records=$nrec
mapinfo_num_send=$sendnum
mapinfo_num_ack=$acknum
new_conn_rc=$RP_CRC/$RP_SRC
new_conn_pings=$RP_PINGS
kernel_errors=$(echo -n "$errs" | grep -c . || true)
cm_ids_left=$(cmids)
EOF
  local detail="killed pid $old after $p1/$n pings; replay: $nrec MAPINFO records, MAPINFO_NUM send=$sendnum ack=$acknum; live connection resumed: rc $crc/$src, $p2/$n pings validated; new connection rc $RP_CRC/$RP_SRC${mp_after:+; our table: before kill ${mp_before%% *}, after restart ${mp_after%% *}, after live end ${mp_end%% *}, final ${mp_final%% *}}"
  if [ "$ok" = 1 ]; then result PASS "$g.restart" "$detail"; else result FAIL "$g.restart" "$detail; problems:$why"; fi
  [ "$kind" = ours ] && [ -n "$mp_after" ] && result INFO "$g.replayed-mappings" "${mp_after#* }"
  return 0
}

# cpu_ms PID: "user system" CPU time of a process so far, in ms (empty when there is none)
cpu_ms() {
  local l; [ -n "$1" ] && read -r l 2>/dev/null < "/proc/$1/stat" || return 0
  l=${l##*) }
  # shellcheck disable=SC2086
  set -- $l
  echo "$(( ${12} * 1000 / $(getconf CLK_TCK) )) $(( ${13} * 1000 / $(getconf CLK_TCK) ))"
}
# cpu_delta "U1 S1" "U2 S2" -> "user+system" ms spent in between, or "-"
cpu_delta() {
  [ -n "$1" ] && [ -n "$2" ] || { echo -; return; }
  local a b; read -r -a a <<< "$1"; read -r -a b <<< "$2"
  echo "$(( b[0] - a[0] ))+$(( b[1] - a[1] ))"
}

# cmtime_runs GROUP: the connection set-up rate over siw (no assertion on timing);
# cmtime.txt also gets the daemon's CPU time (user+system ms) during each run

cmtime_runs() {
  local g=$1 d=$R/$1 port=7300 i ok=1 why="" rates=""
  mkdir -p "$d"
  dyndbg -
  mark "$g.cmtime"
  cmtime -b "$ADDR" -p "$port" > "$d/cmtime-server.txt" 2>&1 &
  local spid=$!
  wait_for 15 listening "$ADDR" "$port" || { ok=0; why+=" cmtime server not listening;"; }
  for i in $(seq "$CMTIME_RUNS"); do
    local out=$d/cmtime-$i.txt t1 t2
    local c1 c2
    c1=$(cpu_ms "${DPID:-}")
    t1=$(date +%s%N)
    timeout -s TERM -k 5 90 cmtime -s "$ADDR" -b "$ADDR" -p "$port" -c "$CMTIME_CONNS" > "$out" 2>&1
    local rc=$?
    t2=$(date +%s%N)
    c2=$(cpu_ms "${DPID:-}")
    local cms; cms=$(awk -F: '/^connect[ \t]*:/{split($2,a," "); print a[1]; exit}' "$out")
    local bad; bad=$(grep -Eic 'error|fail|unable|timed? ?out|reject' "$out" || true)
    local rate=""
    if [ -n "$cms" ]; then rate=$(awk -v c="$CMTIME_CONNS" -v t="$cms" 'BEGIN{if (t > 0) printf "%.0f", c * 1000 / t}'); fi
    echo "$g run=$i conns=$CMTIME_CONNS rc=$rc connect_total_ms=${cms:-?} connects_per_s=${rate:-?} wall_ms=$(( (t2 - t1) / 1000000 )) daemon_cpu_ms=$(cpu_delta "$c1" "$c2") error_lines=$bad" >> "$R/cmtime.txt"
    if [ "$rc" != 0 ] || [ "$bad" != 0 ] || [ -z "$rate" ]; then ok=0; why+=" run $i rc $rc, $bad error lines;"; fi
    rates+="${rate:-?} "
  done
  stop_bg "$spid"
  dyndbg +
  dmesg_since "$g.cmtime" > "$d/dmesg-cmtime.txt"
  local errs; errs=$(kerrors "$d/dmesg-cmtime.txt" | grep -v 'iwpm_register_pid: Unable to send a nlmsg (client = 2)')
  [ -z "$errs" ] || { ok=0; why+=" kernel errors: $(echo "$errs" | head -3 | tr '\n' '|');"; }
  if [ -n "$DPID" ]; then alive "$DPID" || { ok=0; why+=" daemon died;"; }; fi
  local detail="$CMTIME_RUNS x $CMTIME_CONNS connections, connects/s per run: $rates(timing not asserted)"
  if [ "$ok" = 1 ]; then result PASS "$g.cmtime" "$detail"; else result FAIL "$g.cmtime" "$detail; problems:$why"; fi
}

# ------------------------------------------------------------------- groups
group_nodaemon() {
  local g=nodaemon d=$R/nodaemon ok=1 why=""
  mkdir -p "$d"
  if [ -n "$(pgrep -x iwpmd)" ]; then result FAIL nodaemon.rping "an iwpmd is running"; return; fi
  mark "$g.rping"
  rping_pair "$d" rping 7174 3
  sleep 0.5
  dmesg_since "$g.rping" > "$d/dmesg-rping.txt"
  local k=$d/dmesg-rping.txt
  [ "$RP_CRC" = 0 ] && [ "$RP_SRC" = 0 ] && [ "$RP_PINGS" = 3 ] || { ok=0; why+=" rping rc $RP_CRC/$RP_SRC pings $RP_PINGS;"; }
  # Fresh boot, nobody in group 2: the first REG_PID multicast fails, the
  # kernel marks the port mapper unavailable and maps nothing.
  local state="first REG_PID multicast failed -> mapper marked unavailable"
  if ! grep -q 'iwpm_register_pid: Unable to send a nlmsg (client = 2)' "$k"; then
    state="no REG_PID failure logged (mapper state from an earlier group)"
    [ "$(echo "$SCENARIOS" | awk '{print $1}')" = nodaemon ] && { ok=0; why+=" expected 'iwpm_register_pid: Unable to send a nlmsg' on a fresh boot;"; }
  fi
  grep -q 'add_mapping\|query_mapping' "$k" && { ok=0; why+=" kernel mapped without a daemon?;"; }
  echo "state: $state" > "$d/kernel-state.txt"
  if [ "$ok" = 1 ]; then result PASS nodaemon.rping "rping works unmapped: rc $RP_CRC/$RP_SRC, $RP_PINGS pings; $state"
  else result FAIL nodaemon.rping "problems:$why"; fi
  cmtime_runs nodaemon
}

group_daemon() { # group_daemon GROUP KIND
  local g=$1 kind=$2
  mkdir -p "$R/$g"
  if [ "$kind" = ours ] && ! timeout 30 "$NODE" "$P/dist/cli/iwpmd.js" --help > "$R/$g/help.txt" 2>&1; then
    result FAIL "$g.startup" "node dist/cli/iwpmd.js --help fails (daemon not built?): $(head -3 "$R/$g/help.txt" | tr '\n' ' ')"
    return
  fi
  STARTUP_OK=0 STARTUP_WHY=""
  if scenario_startup "$g" "$kind"; then
    scenario_rping "$g" "$kind"
    scenario_restart "$g" "$kind"
    stop_daemon
    echo "exit status after SIGTERM: $DRC" > "$R/$g/daemon-exit.txt"
    if [ "$kind" = ours ]; then
      if [ "$DRC" = 0 ]; then result PASS "$g.sigterm" "daemon exited 0 on SIGTERM"
      else result FAIL "$g.sigterm" "daemon exit status after SIGTERM: $DRC"; fi
    fi
  else
    stop_daemon
  fi
  # cmtime with the daemon: not traced, and (ours) logging at info level, so
  # that the rate measures the daemon rather than its debug log
  mark "$g.cmtime-start"
  start_daemon "$kind" "$R/$g" cmtime nostrace info
  if wait_ready "$g.cmtime-start"; then
    sleep 0.5
    cmtime_runs "$g"
    [ "$kind" = ours ] && mappings "$R/$g" after-cmtime > "$R/$g/mappings-after-cmtime.count"
  else
    result FAIL "$g.cmtime" "daemon not ready"
  fi
  stop_daemon
}

# cmtime only (benchmark runs: IWPMD_KT_SCENARIOS="cmtime-nodaemon cmtime-ref cmtime-ours")
group_cmtime_only() {
  local g=$1 kind=$2
  mkdir -p "$R/$g"
  mark "$g.cmtime-start"
  start_daemon "$kind" "$R/$g" cmtime nostrace info
  if wait_ready "$g.cmtime-start"; then
    sleep 0.5
    cmtime_runs "$g"
  else
    result FAIL "$g.cmtime" "daemon not ready"
  fi
  stop_daemon
}

# node options from a group name: "cmtime-ours+jitless+v8-pool-size=0" -> "--jitless --v8-pool-size=0"
node_flags_of() { local f=${1#*+} o=""; [ "$f" = "$1" ] && return 0; local IFS=+; for x in $f; do o+="--$x "; done; echo "${o% }"; }

# trace-ours / trace-ref [+node flags]: the daemon under strace -f -tt -T (netlink,
# UDP and epoll syscalls) during a few cmtime runs, for the connect path's
# timeline (QUERY in -> REQ out -> REQ in -> REMOTE_INFO + ACC out -> ACC in ->
# RQUERY + ACK out). strace slows every syscall: compare ours with ref.
group_trace() {
  local g=$1 kind=$2 d=$R/$1
  mkdir -p "$d"
  mark "$g.trace-start"
  KT_STRACE_OPTS="-T" KT_TRACE_SET="$TRACE,epoll_wait,epoll_pwait,pselect6,select" start_daemon "$kind" "$d" trace strace info
  if wait_ready "$g.trace-start"; then
    sleep 0.5
    CMTIME_RUNS=${KT_TRACE_RUNS:-4} CMTIME_CONNS=${KT_TRACE_CONNS:-16} cmtime_runs "$g"
  else
    result FAIL "$g.cmtime" "daemon not ready"
  fi
  stop_daemon
  decode "$d" trace
}

# count-ours / count-ref [+node flags]: the daemon under strace -f -c during the
# cmtime runs: system calls per connect (strace-count-cmtime.txt)
group_count() {
  local g=$1 kind=$2 d=$R/$1
  mkdir -p "$d"
  mark "$g.count-start"
  start_daemon "$kind" "$d" cmtime count info
  if wait_ready "$g.count-start"; then
    sleep 0.5
    cmtime_runs "$g"
  else
    result FAIL "$g.cmtime" "daemon not ready"
  fi
  stop_daemon
}

group_compare() {
  local out=$R/compare.txt ok=1 why="" s k
  : > "$out"
  for s in rping restart; do
    local a=$R/ref/outcome-$s.env b=$R/ours/outcome-$s.env
    if [ ! -f "$a" ] || [ ! -f "$b" ]; then ok=0; why+=" missing outcome-$s for ref or ours;"; continue; fi
    echo "== $s (ref | ours)" >> "$out"
    while IFS='=' read -r k va; do
      local vb; vb=$(grep "^$k=" "$b" | cut -d= -f2-)
      local mark_=""
      case "$k" in
        nl_*|replayed_records|mapinfo_num_*) ;;  # daemon-side detail, informative
        *) [ "$va" = "$vb" ] || { mark_="  <-- differs"; ok=0; why+=" $s.$k: ref=$va ours=$vb;"; } ;;
      esac
      printf '%-22s %-12s %-12s%s\n' "$k" "$va" "$vb" "$mark_" >> "$out"
    done < "$a"
  done
  if [ "$ok" = 1 ]; then result PASS compare "same kernel-visible outcome for ref iwpmd and ours (connections, pings, kernel add/query/remote_info/remove, kernel errors, cm_ids; see compare.txt)"
  else result FAIL compare "differences:$why"; fi
}

# ------------------------------------------------------------------ quirks
# Kernel behaviour the spec only inferred ([I]); evidence for docs/real-kernel.md.
# group_quirks GROUP KIND (optional group, not in the default list)
group_quirks() {
  local g=$1 kind=$2 d=$R/$1
  mkdir -p "$d"
  [ "$kind" = ours ] && ! timeout 30 "$NODE" "$P/dist/cli/iwpmd.js" --help >/dev/null 2>&1 \
    && { result FAIL "$g" "daemon not built"; return; }
  quirk_replay_batches "$g" "$kind"
  quirk_hung_daemon "$g" "$kind"
  quirk_dead_daemon "$g" "$kind"
}

# 26 listeners, SIGKILL, restart: how the kernel packs the MAPINFO replay
quirk_replay_batches() {
  local g=$1 kind=$2 d=$R/$1 ok=1 why="" n=26 i pids=()
  mark "$g.batch"
  start_daemon "$kind" "$d" batch1
  wait_ready "$g.batch" || { result FAIL "$g.replay-batches" "daemon not ready"; stop_daemon; return; }
  for i in $(seq 0 $((n - 1))); do
    rping -s -a "$ADDR" -p $((7400 + i)) -C 1 > /dev/null 2>&1 &
    pids+=($!)
  done
  wait_for 90 sh -c "[ \$(rdma res show cm_id | grep -c 'state LISTEN') -ge $n ]" || why+=" not all $n listeners up;"
  local mb="" ma="" mf=""
  [ "$kind" = ours ] && mb=$(mappings "$d" batch-before)
  kill -KILL "$DPID"; wait_exit "$SPID" 10 || stop_bg "$SPID"; rm -f "$CTL"
  mark "$g.batch.2"
  start_daemon "$kind" "$d" batch2
  wait_ready "$g.batch.2" || why+=" restarted daemon not ready;"
  sleep 3
  [ "$kind" = ours ] && ma=$(mappings "$d" batch-after)
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null; done
  for i in "${pids[@]}"; do wait_exit "$i" 10 || stop_bg "$i"; done
  sleep 2
  [ "$kind" = ours ] && mf=$(mappings "$d" batch-final)
  dmesg_since "$g.batch.2" > "$d/dmesg-batch.txt"
  decode "$d" batch2
  local f=$d/nl-batch2.txt
  # records per datagram: each datagram of the replay ends in a bare 16-byte NLMSG_DONE
  local per; per=$(awk '/ in  nl  0x0806 MAPINFO /{c++} / in  nl  0x0003 NLMSG_DONE +len=16 /{printf "%d ", c; c=0}' "$f")
  local total; total=$(nlc ' in  nl  0x0806 MAPINFO ' "$f")
  local sendnum acknum
  sendnum=$(grep ' in  nl  0x0807 MAPINFO_NUM' "$f" | head -1 | grep -o '\[2\]=u32:[0-9]*' | cut -d: -f2)
  acknum=$(grep ' out nl  0x0807 MAPINFO_NUM' "$f" | head -1 | grep -o '\[3\]=u32:[0-9]*' | cut -d: -f2)
  # where the dump's own NLMSG_DONE (seq = our MAPINFO request's seq) comes
  grep -n ' in  nl ' "$f" | head -40 > "$d/batch-order.txt"
  [ "$total" = "$n" ] || { ok=0; why+=" $total records replayed (want $n);"; }
  [ "$sendnum" = "$n" ] && [ "$acknum" = "$n" ] || { ok=0; why+=" MAPINFO_NUM send $sendnum ack $acknum;"; }
  if [ "$kind" = ours ]; then
    [ "${mb%% *}" = "$n" ] || { ok=0; why+=" before kill ${mb%% *} mappings;"; }
    [ "${ma%% *}" = "$n" ] || { ok=0; why+=" after replay ${ma%% *} mappings;"; }
    [ "${mf%% *}" = 0 ] || { ok=0; why+=" after the listeners closed ${mf%% *} mappings;"; }
  fi
  alive "$DPID" || { ok=0; why+=" daemon died;"; }
  stop_daemon
  local detail="$n listeners replayed: records per datagram: $per(total $total), MAPINFO_NUM send=$sendnum ack=$acknum${ma:+; our table before/after/final: ${mb%% *}/${ma%% *}/${mf%% *}}"
  if [ "$ok" = 1 ]; then result PASS "$g.replay-batches" "$detail"; else result FAIL "$g.replay-batches" "$detail; problems:$why"; fi
}

# SIGSTOP the daemon: every listen/connect waits for the kernel's 10 s timeout.
# The stopped daemon is then SIGKILLed, not resumed (see quirk_late_reply for
# why), and a fresh daemon takes over.
quirk_hung_daemon() {
  local g=$1 kind=$2 d=$R/$1 ok=1 why=""
  mark "$g.hung"
  start_daemon "$kind" "$d" hung
  wait_ready "$g.hung" || { result FAIL "$g.hung-daemon" "daemon not ready"; stop_daemon; return; }
  rping_pair "$d" hung-warmup 7500 3   # registers the daemon (REG_PID)
  kill -STOP "$DPID"
  mark "$g.hung.2"
  local t1 t2; t1=$(now_ms)
  rping_pair "$d" hung 7501 3 40 60
  t2=$(now_ms)
  local el=$(( t2 - t1 )) r1="$RP_CRC/$RP_SRC/$RP_PINGS"
  kill -KILL "$DPID"; wait_exit "$SPID" 10 || stop_bg "$SPID"; rm -f "$CTL"
  dmesg_since "$g.hung.2" > "$d/dmesg-hung.txt"
  mark "$g.hung.3"
  start_daemon "$kind" "$d" hung2
  wait_ready "$g.hung.3" || why+=" new daemon not ready;"
  rping_pair "$d" hung-after 7502 3
  local r2="$RP_CRC/$RP_SRC/$RP_PINGS"
  sleep 1
  dmesg_since "$g.hung.3" > "$d/dmesg-hung-after.txt"
  local nto; nto=$(count 'iwpm_wait_complete_req: Timeout 10 sec' "$d/dmesg-hung.txt")
  [ "$r1" = 0/0/3 ] || { ok=0; why+=" rping while the daemon was stopped: $r1;"; }
  [ "$r2" = 0/0/3 ] || { ok=0; why+=" rping with the new daemon: $r2;"; }
  [ "$nto" -ge 2 ] || { ok=0; why+=" $nto kernel timeouts while stopped (want listen + connect);"; }
  [ "$el" -ge 10000 ] || { ok=0; why+=" rping pair took only $el ms while the daemon was stopped;"; }
  grep -q 'add_mapping: Local sockaddr: IPV4 192.0.2.1: 7502' "$d/dmesg-hung-after.txt" || { ok=0; why+=" listener not mapped by the new daemon;"; }
  grep -q 'Timeout' "$d/dmesg-hung-after.txt" && { ok=0; why+=" timeouts with the new daemon;"; }
  local errs; errs=$(kerrors "$d/dmesg-hung-after.txt" | grep -v 'Received a Reject')
  [ -z "$errs" ] || { ok=0; why+=" kernel errors: $(echo "$errs" | head -3 | tr '\n' '|');"; }
  alive "$DPID" || { ok=0; why+=" new daemon died;"; }
  stop_daemon
  local detail="daemon SIGSTOPped: rping pair took ${el} ms, rc/pings $r1, kernel 'Timeout 10 sec for netlink request' x$nto, connections proceed unmapped; stopped daemon SIGKILLed, new daemon maps again (rping $r2)"
  if [ "$ok" = 1 ]; then result PASS "$g.hung-daemon" "$detail"; else result FAIL "$g.hung-daemon" "$detail; problems:$why"; fi
}

# SIGSTOP, let the kernel time out (10 s) on ADD and QUERY, then SIGCONT. A
# daemon that answers those requests now hands the 6.1 kernel a reply whose
# request object still sits in iwpm_nlmsg_req_list (its refcount never drops
# to zero) with req_buffer pointing into the dead stack frame of iw_cm_map():
# iwpm_add_mapping_cb / iwpm_add_and_query_mapping_cb then read and write a
# stale kernel stack (observed: Oops in iwpm_compare_sockaddr).
#
# quirk_late_reply GROUP KIND [live]
#   default: the rping pair has finished before SIGCONT, so the REMOVEs of both
#            cm_ids are queued behind the timed-out ADD and QUERY (one read).
#   live:    SIGCONT while the rping pair is still running (its ADD and QUERY
#            timed out, the connection is up): no REMOVE follows the requests,
#            only the daemon's own stall detection can tell they are late.
# PASS = no reply to a timed-out request, no oops/BUG/general protection/page
# fault, the daemon survives and (ours) counts the dropped requests
# (iwpmctl show stats: daemon.lateDropped) and says so in its log, and new
# connections afterwards are mapped normally. Groups "late-reply" and
# "late-reply-live" (ours) are in the default list, last; "late-reply-ref"
# (rdma-core's iwpmd, which answers and can oops the kernel) is opt-in: run it
# last (an oops poisons the rest of the boot).
quirk_late_reply() {
  local g=$1 kind=$2 mode=${3:-} d=$R/$1 ok=1 why="" spid="" cpid=""
  mkdir -p "$d"
  mark "$g.late"
  start_daemon "$kind" "$d" late
  wait_ready "$g.late" || { result FAIL "$g.late-reply" "daemon not ready"; stop_daemon; return; }
  rping_pair "$d" late-warmup 7520 3   # registers the daemon (REG_PID)
  kill -STOP "$DPID"
  mark "$g.late.2"
  local t1 t2 r1
  t1=$(now_ms)
  if [ "$mode" = live ]; then
    # a long rping pair: both its ADD (listen) and QUERY (connect) time out
    rping -s -a "$ADDR" -p 7521 -C 100000 > "$d/rping-late-server.txt" 2>&1 &
    spid=$!
    stdbuf -oL rping -c -a "$ADDR" -p 7521 -C 100000 -v > "$d/rping-late-client.txt" 2>&1 &
    cpid=$!
    wait_for 60 sh -c "[ \$(dmesg | awk '/kt-mark: $g.late.2/{f=1} f' | grep -c 'Timeout 10 sec for netlink request') -ge 2 ]" \
      || why+=" the kernel did not time out twice within 60 s;"
    wait_for 20 sh -c "[ \$(grep -c 'ping data:' '$d/rping-late-client.txt') -ge 3 ]" || why+=" live rping made no progress;"
    r1="live, $(grep -c 'ping data:' "$d/rping-late-client.txt") pings before SIGCONT"
  else
    rping_pair "$d" late 7521 3 40 60
    r1="$RP_CRC/$RP_SRC/$RP_PINGS"
  fi
  t2=$(now_ms)
  kill -CONT "$DPID"
  sleep 5
  if [ -n "$cpid" ]; then
    local pl; pl=$(grep -c 'ping data:' "$d/rping-late-client.txt")
    kill -TERM "$cpid" "$spid" 2>/dev/null
    wait_exit "$cpid" 10 || stop_bg "$cpid"
    wait_exit "$spid" 10 || stop_bg "$spid"
    r1+=", $pl after"
  fi
  sleep 1
  dmesg_since "$g.late.2" > "$d/dmesg-late.txt"
  local st="" lines=""
  if [ "$kind" = ours ] && alive "$DPID"; then
    st=$(stats "$d" late)
    lines=$(grep -Ec 'stood still|gave up on it' "$d/daemon-late.log")
  fi
  local seqs; seqs=$(grep -o 'Timeout 10 sec for netlink request (seq = [0-9]*' "$d/dmesg-late.txt" | grep -o '[0-9]*$' | tr '\n' ' ')
  # new connections after the stall are mapped normally
  local r2="not run"
  if alive "$DPID" && ! grep -Eq 'BUG:|Oops|general protection|page fault' "$d/dmesg-late.txt"; then
    mark "$g.late.3"
    rping_pair "$d" late-after 7522 3
    r2="$RP_CRC/$RP_SRC/$RP_PINGS"
    sleep 1
    dmesg_since "$g.late.3" > "$d/dmesg-late-after.txt"
    [ "$r2" = 0/0/3 ] || { ok=0; why+=" rping after SIGCONT: $r2;"; }
    grep -q 'add_mapping: Local sockaddr: IPV4 192.0.2.1: 7522' "$d/dmesg-late-after.txt" || { ok=0; why+=" new listener not mapped;"; }
    grep -q 'query_mapping: Remote sockaddr: IPV4 192.0.2.1: 7522' "$d/dmesg-late-after.txt" || { ok=0; why+=" new connection not mapped;"; }
    grep -q 'remote_info: Local sockaddr: IPV4 192.0.2.1: 7522' "$d/dmesg-late-after.txt" || { ok=0; why+=" no REMOTE_INFO for the new connection;"; }
    local errs; errs=$(kerrors "$d/dmesg-late-after.txt")
    [ -z "$errs" ] || { ok=0; why+=" kernel errors after SIGCONT: $(echo "$errs" | head -3 | tr '\n' '|');"; }
  else
    ok=0; why+=" no new connection tried (daemon dead or kernel oopsed);"
  fi
  dmesg_since "$g.late.2" > "$d/dmesg-late-all.txt"
  decode "$d" late
  local late="" q
  : > "$d/late-replies.txt"
  for q in $seqs; do
    grep -E " out nl  0x080[012] .*\[1\]=u32:$q( |$)" "$d/nl-late.txt" >> "$d/late-replies.txt" && late+="$q "
  done
  local oops=no
  if grep -Eq 'BUG:|Oops|general protection|page fault' "$d/dmesg-late-all.txt"; then
    # the sender is stuck in (or killed by) the oops, so strace never sees its
    # sendmsg complete: name the task and the callback from the oops instead
    oops="yes (in $(grep -o 'PID: [0-9]* Comm: [^ ]*' "$d/dmesg-late-all.txt" | head -1), $(grep -o 'iwpm_[a-z_]*_cb' "$d/dmesg-late-all.txt" | head -1))"
    # the oops hit the daemon's own send of a reply (strace cannot show it)
    grep -q "PID: ${DPID:-x} Comm" "$d/dmesg-late-all.txt" && late+="(a reply from the daemon, which oopsed in its send) "
  fi
  [ -n "$seqs" ] || { ok=0; why+=" the kernel did not time out;"; }
  [ "$(( t2 - t1 ))" -ge 10000 ] || { ok=0; why+=" the daemon was stopped only $(( t2 - t1 )) ms;"; }
  [ -z "$late" ] || { ok=0; why+=" replies sent to timed-out requests: $late;"; }
  [ "$oops" = no ] || { ok=0; why+=" kernel oops;"; }
  # what the daemon read after SIGCONT (the requests of the stall and their REMOVEs)
  grep -E ' in  nl  0x080[0-3] ' "$d/nl-late.txt" > "$d/late-in.txt"
  alive "$DPID" || { ok=0; why+=" daemon died;"; }
  local dropped=""
  if [ "$kind" = ours ]; then
    dropped=$(statv "$st" lateDropped)
    [ -n "$dropped" ] && [ "$dropped" -ge 1 ] || { ok=0; why+=" daemon.lateDropped=${dropped:-missing} (want >= 1);"; }
    [ "${lines:-0}" -ge 1 ] || { ok=0; why+=" the daemon log does not mention the late requests;"; }
  fi
  local how=""
  [ "$kind" = ours ] && how="; daemon: lateDropped=${dropped:-?}, log: $(grep -Eo 'stood still for [0-9]+ ms|REMOVE [0-9.:]+ follows its own request' "$d/daemon-late.log" 2>/dev/null | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')"
  local detail="daemon stopped $(( t2 - t1 )) ms; timed-out kernel requests: seq ${seqs:-none}; late replies sent: ${late:-none}; kernel oops: $oops; rping while stopped $r1$how; rping after SIGCONT $r2"
  if [ "$ok" = 1 ]; then result PASS "$g.late-reply" "$detail"; else result FAIL "$g.late-reply" "$detail; problems:$why"; fi
  if alive "$DPID"; then stop_daemon; else kill -KILL "$SPID" 2>/dev/null; DPID="" SPID=""; fi
}

# SIGKILL without restart: the next unicast fails, the kernel forgets the daemon
quirk_dead_daemon() {
  local g=$1 kind=$2 d=$R/$1 ok=1 why=""
  mark "$g.dead"
  start_daemon "$kind" "$d" dead1
  wait_ready "$g.dead" || { result FAIL "$g.dead-daemon" "daemon not ready"; stop_daemon; return; }
  rping_pair "$d" dead-warmup 7510 3
  kill -KILL "$DPID"; wait_exit "$SPID" 10 || stop_bg "$SPID"; rm -f "$CTL"
  mark "$g.dead.2"
  local t1 t2; t1=$(date +%s%N)
  rping_pair "$d" dead 7511 3
  t2=$(date +%s%N)
  local el1=$(( (t2 - t1) / 1000000 ))
  local r1="$RP_CRC/$RP_SRC/$RP_PINGS"
  mark "$g.dead.3"
  rping_pair "$d" dead-again 7512 3
  local r2="$RP_CRC/$RP_SRC/$RP_PINGS"
  dmesg_since "$g.dead.2" | awk '/kt-mark: '"$g"'.dead.3/{exit} 1' > "$d/dmesg-dead.txt"
  dmesg_since "$g.dead.3" > "$d/dmesg-dead-again.txt"
  # a new daemon brings mapping back
  mark "$g.dead.4"
  start_daemon "$kind" "$d" dead2
  wait_ready "$g.dead.4" || why+=" new daemon not ready;"
  rping_pair "$d" dead-recovered 7513 3
  local r3="$RP_CRC/$RP_SRC/$RP_PINGS"
  dmesg_since "$g.dead.4" > "$d/dmesg-dead-recovered.txt"
  [ "$r1" = 0/0/3 ] && [ "$r2" = 0/0/3 ] && [ "$r3" = 0/0/3 ] || { ok=0; why+=" rping results $r1 $r2 $r3;"; }
  grep -q 'Unable to send a nlmsg' "$d/dmesg-dead.txt" || { ok=0; why+=" no 'Unable to send' after the daemon died;"; }
  grep -Eq 'iwpm_|_mapping' "$d/dmesg-dead-again.txt" && { ok=0; why+=" kernel still talks to a dead daemon;"; }
  grep -q 'Multicasting a nlmsg' "$d/dmesg-dead-recovered.txt" || { ok=0; why+=" no REG_PID after the new daemon's HELLO;"; }
  grep -q 'query_mapping: Remote sockaddr: IPV4 192.0.2.1: 7513' "$d/dmesg-dead-recovered.txt" || { ok=0; why+=" not mapped with the new daemon;"; }
  alive "$DPID" || { ok=0; why+=" new daemon died;"; }
  stop_daemon
  local first; first=$(grep -o 'iwpm_[a-z_]*: Unable to send a nlmsg.*' "$d/dmesg-dead.txt" | head -2 | tr '\n' '|')
  local detail="after SIGKILL: first pair ${el1} ms ($first), rping $r1; next pair: no iwpm traffic at all, rping $r2; new daemon: REG_PID again, mapped, rping $r3"
  if [ "$ok" = 1 ]; then result PASS "$g.dead-daemon" "$detail"; else result FAIL "$g.dead-daemon" "$detail; problems:$why"; fi
}

# --------------------------------------------------------------------- main
say "guest-main: scenarios: $SCENARIOS"
: > "$SUM"
if setup; then
  for grp in $SCENARIOS; do
    case $grp in
      nodaemon) group_nodaemon ;;
      ref) group_daemon ref ref ;;
      ours) group_daemon ours ours ;;
      compare) group_compare ;;
      quirks) group_quirks quirks ours ;;
      quirks-ref) group_quirks quirks-ref ref ;;
      cmtime-nodaemon) cmtime_runs cmtime-nodaemon ;;
      profile-ours)  # CPU profile of our daemon during cmtime (results/profile-ours/*.cpuprofile)
        mkdir -p "$R/profile-ours"
        KT_NODE_FLAGS="--cpu-prof --cpu-prof-dir=$R/profile-ours" group_cmtime_only profile-ours ours ;;
      cmtime-ref|cmtime-ours) group_cmtime_only "$grp" "${grp#cmtime-}" ;;
      cmtime-ours+*)  # our daemon with extra node options, e.g. cmtime-ours+jitless+v8-pool-size=0
        KT_NODE_FLAGS=$(node_flags_of "$grp") group_cmtime_only "$grp" ours ;;
      trace-ref) group_trace trace-ref ref ;;
      count-ref) group_count count-ref ref ;;
      count-ours|count-ours+*) KT_NODE_FLAGS=$(node_flags_of "$grp") group_count "$grp" ours ;;
      trace-ours|trace-ours+*) KT_NODE_FLAGS=$(node_flags_of "$grp") group_trace "$grp" ours ;;
      late-reply) quirk_late_reply late-reply ours ;;
      late-reply-ref) quirk_late_reply late-reply-ref ref ;;
      late-reply-live) quirk_late_reply late-reply-live ours live ;;
      *) result FAIL "$grp" "unknown scenario group" ;;
    esac
  done
fi
# leave nothing behind
for p in $(pgrep -x rping) $(pgrep -x cmtime) $(pgrep -x iwpmd); do kill -KILL "$p" 2>/dev/null; done
[ -n "${SYSLOG_PID:-}" ] && stop_bg "$SYSLOG_PID"
dmesg > "$R/dmesg.txt"
rdma res show > "$R/rdma-res-final.txt" 2>&1
say "guest-main: done"
