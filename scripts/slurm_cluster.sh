#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the integration tests and for trying sweeps
# with `executor: slurm` without a real cluster.
#
#   bash scripts/slurm_cluster.sh start    # install (once), configure, start; waits for an idle node
#   bash scripts/slurm_cluster.sh status   # daemons, node state, queue
#   bash scripts/slurm_cluster.sh stop     # stop the daemons this script started
#
# What `start` sets up (idempotent: a healthy cluster is left alone and `start` returns at once):
#   - Debian packages slurm-wlm, munge, slurmdbd, mariadb-server (apt-get update once, only when
#     something is missing);
#   - /etc/slurm/slurm.conf: one node named after this host with its real CPU count and memory,
#     everything on 127.0.0.1, proctrack/linuxproc, task/none (no cgroups), select/cons_tres;
#   - accounting through slurmdbd + a local MariaDB, so `sacct` works (submitit polls sacct for
#     job states; the tests read start/end times from it). If the database cannot be brought up
#     the cluster starts without accounting and says so (PRUNEBENCH_SLURM_ACCOUNTING=0 skips it).
# Needs root (or passwordless sudo). Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log.
set -euo pipefail

CLUSTER=${PRUNEBENCH_SLURM_CLUSTER:-prunebench}
ACCOUNTING=${PRUNEBENCH_SLURM_ACCOUNTING:-1}
TIMEOUT=${PRUNEBENCH_SLURM_TIMEOUT:-90}   # seconds to wait for each daemon / the node
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
RUN_DIR=/run/slurm
DB_PASS_FILE=$CONF_DIR/.dbpass
PACKAGES=(slurm-wlm munge)
DB_PACKAGES=(slurmdbd mariadb-server)

say() { printf '[slurm_cluster] %s\n' "$*"; }
die() { printf '[slurm_cluster] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 && ${1:-} != status ]]; then
    if [[ ${1:-} == start ]] && command -v sinfo >/dev/null \
        && [[ $(sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -n1) == @(idle|mixed|allocated)* ]]; then
        say "cluster already running (node $(hostname -s) $(sinfo -h -N -n "$(hostname -s)" -o %T))"; exit 0
    fi
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then exec sudo -n -E bash "$0" "$@"; fi
    die "needs root (or passwordless sudo) to install and start Slurm"
fi

# --------------------------------------------------------------------------- helpers
pid_alive() {  # pid_alive PIDFILE: the process exists and is not a zombie
    [[ -s $1 ]] || return 1
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1; [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, wait up to 20 s for it to exit
    pid_alive "$2" || return 0
    say "stopping $1"
    kill "$(cat "$2" 2>/dev/null)" 2>/dev/null || true
    local t0=$SECONDS
    while pid_alive "$2" && (( SECONDS - t0 < 20 )); do sleep 0.5; done
    pid_alive "$2" && say "WARNING: $1 (pid $(cat "$2")) still running after 20 s"; true
    return 0
}

wait_for() {  # wait_for DESCRIPTION LOGFILE COMMAND...
    local what=$1 log=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - t0 >= TIMEOUT )); then
            say "$what not ready after ${TIMEOUT}s; last lines of $log:"
            tail -n 20 "$log" 2>/dev/null | sed 's/^/    /' >&2 || true
            return 1
        fi
        sleep 1
    done
}

accounting_on() { [[ $ACCOUNTING == 1 ]] && grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF" 2>/dev/null; }

node_idle() {
    local state
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1)
    [[ $state == idle* || $state == mixed* || $state == allocated* ]]
}

# --------------------------------------------------------------------------- install
install_packages() {
    local missing=() p
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
    (( ${#missing[@]} )) || return 0
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${_APT_UPDATED:-} ]]; then
        apt-get -o DPkg::Lock::Timeout=120 update -qq >/tmp/slurm_cluster.apt.log 2>&1 || { cat /tmp/slurm_cluster.apt.log >&2; die "apt-get update failed"; }
        _APT_UPDATED=1
    fi
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >>/tmp/slurm_cluster.apt.log 2>&1 \
        || { tail -n 30 /tmp/slurm_cluster.apt.log >&2; die "apt-get install ${missing[*]} failed (log: /tmp/slurm_cluster.apt.log)"; }
}

# --------------------------------------------------------------------------- configuration
write_conf() {  # write_conf ACCOUNTING(0|1)
    local hw cpus sockets cores threads mem
    hw=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
    cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
    threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus && -n $mem ]] || die "could not read this machine's CPUs/memory from 'slurmd -C': $hw"
    local acct
    if [[ $1 == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    mkdir -p "$CONF_DIR"
    cat >"$CONF.tmp" <<EOF
# Written by prunebench scripts/slurm_cluster.sh -- a one-node test cluster on this host.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
Waittime=0
$acct
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( mem / cpus / 2 ))
EOF
    if ! cmp -s "$CONF.tmp" "$CONF"; then
        mv "$CONF.tmp" "$CONF"
        CONF_CHANGED=1
        say "wrote $CONF (node $NODE: $cpus CPUs, ${mem} MB, accounting=$([[ $1 == 1 ]] && echo slurmdbd || echo none))"
    else
        rm -f "$CONF.tmp"
    fi
}

# --------------------------------------------------------------------------- daemons
start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "generating munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge; chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_for munged /var/log/munge/munged.log bash -c 'munge -n | unmunge' || die "munged did not start"
}

start_database() {  # mariadb + slurmdbd; returns 1 (with a message) when accounting cannot be set up
    install_packages "${DB_PACKAGES[@]}" || return 1
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mysqladmin --protocol=socket ping >/dev/null 2>&1; then
        say "starting mariadb"
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1
        setsid -f /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --skip-name-resolve \
            --pid-file=/run/mysqld/mysqld.pid --log-error=$LOG_DIR/mariadb.log \
            --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1
        wait_for mariadb $LOG_DIR/mariadb.log mysqladmin --protocol=socket ping || return 1
    fi
    if [[ ! -s $DB_PASS_FILE ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
    fi
    local pass; pass=$(cat "$DB_PASS_FILE")
    mariadb --protocol=socket -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || { say "could not create the accounting database user"; return 1; }
    cat >"$DBD_CONF.tmp" <<EOF
# Written by prunebench scripts/slurm_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBD_CONF.tmp"
    local changed=0
    cmp -s "$DBD_CONF.tmp" "$DBD_CONF" || { mv "$DBD_CONF.tmp" "$DBD_CONF"; changed=1; }
    rm -f "$DBD_CONF.tmp"
    if pid_alive $RUN_DIR/slurmdbd.pid && (( ! changed )); then return 0; fi
    stop_pidfile slurmdbd $RUN_DIR/slurmdbd.pid
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
    # sacctmgr only answers once slurmdbd has created its tables and listens.
    wait_for slurmdbd $LOG_DIR/slurmdbd.log sacctmgr -n -P list cluster || return 1
}

start_slurm() {
    local d
    for d in ctld:slurmctld d:slurmd; do
        local name=${d#*:}
        if pid_alive "$RUN_DIR/$name.pid"; then
            if [[ -n ${CONF_CHANGED:-} ]]; then
                say "restarting $name (config changed)"
                stop_pidfile $name "$RUN_DIR/$name.pid"
            else
                continue
            fi
        fi
        say "starting $name"
        if [[ $name == slurmctld ]]; then
            # Register the cluster in the database first, so slurmctld finds it at once.
            if accounting_on && ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
                sacctmgr -i add cluster "$CLUSTER" >/dev/null
            fi
            /usr/sbin/slurmctld
            wait_for slurmctld $LOG_DIR/slurmctld.log scontrol ping || die "slurmctld did not start (log: $LOG_DIR/slurmctld.log)"
        else
            /usr/sbin/slurmd
        fi
    done
}

cmd_start() {
    local t0=$SECONDS
    NODE=$(hostname -s)
    install_packages "${PACKAGES[@]}"
    mkdir -p "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d" "$RUN_DIR"
    start_munge
    local acct=0
    if [[ $ACCOUNTING == 1 ]]; then
        write_conf 1  # sacctmgr (the readiness check of slurmdbd) reads slurm.conf
        if start_database; then acct=1
        else say "WARNING: accounting (slurmdbd/MariaDB) could not be set up; starting without it (sacct will not work)"
        fi
    fi
    write_conf "$acct"
    start_slurm
    # A node left down/drained by an earlier run comes back once the daemons are healthy.
    local state; state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    if ! wait_for "node $NODE idle" $LOG_DIR/slurmd.log node_idle; then
        sinfo -N -l >&2 || true
        die "node $NODE did not become idle within ${TIMEOUT}s (logs: $LOG_DIR/slurmd.log, $LOG_DIR/slurmctld.log)"
    fi
    say "ready in $(( SECONDS - t0 ))s: cluster $CLUSTER, node $NODE $(sinfo -h -N -n "$NODE" -o '%T, %c CPUs, %m MB'), accounting=$([[ $acct == 1 ]] && echo slurmdbd || echo none)"
}

cmd_stop() {
    local name
    for name in slurmd slurmctld slurmdbd; do stop_pidfile $name "$RUN_DIR/$name.pid"; done
    stop_pidfile mariadb /run/mysqld/mysqld.pid
    stop_pidfile munged /run/munge/munged.pid
}

cmd_status() {
    local name rc=0
    for name in slurmctld slurmd slurmdbd; do
        if pid_alive "$RUN_DIR/$name.pid"; then say "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"
        else say "$name: not running"; [[ $name == slurmdbd ]] || rc=1; fi
    done
    if command -v sinfo >/dev/null; then
        sinfo -N -o '%N %T %c %m %P' 2>&1 || rc=1
        squeue 2>&1 || true
        sacct -n -X -S now-1hours -o JobID,JobName%32,State,Start,End 2>&1 | tail -n 10 || true
    else
        say "Slurm is not installed (run: bash $0 start)"; rc=1
    fi
    return $rc
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; sleep 2; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
