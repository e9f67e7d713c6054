# scripts/lib.sh - shell helpers shared by scripts/demo and scripts/bench. Sourced, not run.
#
# The sourcing script must define die() and set TESTNET (path of the testnet binary) and
# PREFIX (the testnet prefix it works on). Every process started in the background is
# recorded with track_pid and ended by PID only (kill_my_pids in the script's EXIT trap).
# shellcheck shell=bash

TN_TIMEOUT=${TN_TIMEOUT:-120}     # seconds one testnet command may take
declare -a MY_PIDS=()
declare -gA TAKES_PREFIX=()

# put ~/.cargo/bin (cargo, boringtun-cli, gotatun) on PATH
add_cargo_bin_to_path() {
    local cb="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
    case ":$PATH:" in *":$cb:"*) ;; *) export PATH="$cb:$PATH" ;; esac
}

# wait_for SECONDS CMD... : poll until CMD succeeds; false after SECONDS
wait_for() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

# proc_done PID : true once PID has exited (gone, or a zombie not yet reaped)
proc_done() {
    [[ -r /proc/$1/stat ]] || return 0
    [[ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" == Z ]]
}

# track_pid PID : remember a background process to end on exit; with PID_FILE set, also
# append it there (a subshell's PIDs, so that its parent can end them if it must)
track_pid() {
    MY_PIDS+=("$1")
    if [[ -n "${PID_FILE:-}" ]]; then echo "$1" >>"$PID_FILE"; fi
}

forget_pid() {
    local p; local -a keep=()
    for p in "${MY_PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    MY_PIDS=("${keep[@]}")
}

# kill_pid PID [SECONDS] : TERM, wait up to SECONDS (default 3), then KILL, then reap.
# Only processes this script started. Give scripts that clean up in their own traps time
# to finish: bash runs a trap only after the command it is waiting on returns.
kill_pid() {
    local pid=$1 patience=${2:-3} _
    proc_done "$pid" || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((patience * 10))); do proc_done "$pid" && break; sleep 0.1; done
    proc_done "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# reap PID SECONDS : wait for PID to exit (kill it after SECONDS), forget it, return its status
reap() {
    local pid=$1 limit=$2 rc=0
    wait_for "$limit" proc_done "$pid" || kill_pid "$pid"
    wait "$pid" 2>/dev/null || rc=$?
    forget_pid "$pid"
    return "$rc"
}

kill_my_pids() {
    local pid
    for pid in "${MY_PIDS[@]}"; do kill_pid "$pid"; done
    MY_PIDS=()
}

# No `cmd | grep -q` in these helpers: under pipefail, grep exiting at its first match can
# kill the writer with SIGPIPE (status 141) and turn a match into a failure. Capture first.
ns_exists() {
    local l
    l=$(ip netns list 2>/dev/null) || return 1
    [[ $'\n'"$l"$'\n' =~ $'\n'"$1"[[:space:]$'\n'] ]]
}

# listening NS PORT : a TCP socket listens on PORT in namespace NS
listening() {
    local l
    l=$(ip netns exec "$1" ss -Htln "sport = :$2" 2>/dev/null) || return 1
    [[ -n "$l" ]]
}

# ----------------------------------------------------------------- testnet ----
tn() { timeout -k 5 "$TN_TIMEOUT" "$TESTNET" "$@"; }

# takes_prefix SUB : does `testnet SUB` accept --prefix? (asked once from its --help), so that
# exec/addr/status address our network whether or not testnet remembers the prefix itself
takes_prefix() {
    local sub=$1
    if [[ -z "${TAKES_PREFIX[$sub]:-}" ]]; then
        local help
        help=$("$TESTNET" "$sub" --help 2>&1) || true
        if [[ "$help" == *--prefix* ]]; then TAKES_PREFIX[$sub]=1
        else TAKES_PREFIX[$sub]=0
        fi
    fi
    [[ "${TAKES_PREFIX[$sub]}" == 1 ]]
}

# tnp SUB ARGS... : testnet SUB [--prefix $PREFIX] ARGS...
tnp() {
    local sub=$1; shift
    if takes_prefix "$sub"; then tn "$sub" --prefix "$PREFIX" "$@"; else tn "$sub" "$@"; fi
}

# tn_hint SUB ARGS... : the command line a user would type (relative to the repo)
tn_hint() {
    local sub=$1; shift
    local t=${TESTNET#"$PWD"/}
    if takes_prefix "$sub"; then echo "$t $sub --prefix $PREFIX${*:+ $*}"; else echo "$t $sub${*:+ $*}"; fi
}

# overlay_addr NAME : the overlay IPv4 address of a host or container (from `testnet addr`)
overlay_addr() {
    local out a
    out=$(tnp addr "$1") || die "testnet addr $1 failed"
    [[ "$out" =~ ([0-9]{1,3}\.){3}[0-9]{1,3} ]] && a=${BASH_REMATCH[0]}
    [[ -n "$a" ]] || die "testnet addr $1 printed no IPv4 address: '$out'"
    echo "$a"
}

# ns_pids_of_exe NS NAME : PIDs in namespace NS whose executable is called NAME
ns_pids_of_exe() {
    local pid exe
    for pid in $(ip netns pids "$1" 2>/dev/null); do
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
        exe=${exe% (deleted)}
        [[ "${exe##*/}" == "$2" ]] && echo "$pid"
    done
    return 0
}

# cpu_ticks PID... : utime+stime (all threads) summed over PIDs, in clock ticks
cpu_ticks() {
    local t=0 pid v
    for pid in "$@"; do
        v=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# ---------------------------------------------------------------- commands ----
# need_commands WHO CMD:PACKAGE... : true if every CMD is on PATH; otherwise one line per
# missing command, naming the Debian package that has it, and false
need_commands() {
    local who=$1 spec cmd pkg rc=0
    shift
    for spec in "$@"; do
        cmd=${spec%%:*} pkg=${spec#*:}
        if ! command -v "$cmd" >/dev/null 2>&1; then
            printf '%s: command %s is missing (Debian package %s): run scripts/setup, or apt-get install %s\n' \
                "$who" "$cmd" "$pkg" "$pkg" >&2
            rc=1
        fi
    done
    return "$rc"
}

# what the testnet hosts, the demo and the end-to-end tests run, with their packages
# shellcheck disable=SC2034  # used by the scripts that source this file
TESTNET_COMMANDS=(ip:iproute2 ss:iproute2 bridge:iproute2 ping:iputils-ping nft:nftables
                  sysctl:procps nc:netcat-openbsd)
