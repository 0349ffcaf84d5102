#!/usr/bin/env bash
# Real RDP server for the end-to-end test: xrdp 0.9.21 + xrdp-sesman + xorgxrdp.
#
#   rdp-server.sh start PORT STATE_DIR   start xrdp-sesman + xrdp on 127.0.0.1:PORT,
#                                        return once both listen (<= ~20 s)
#   rdp-server.sh stop STATE_DIR         stop everything started from STATE_DIR
#                                        (and all processes of the test user)
#
# Runs as root. Uses private copies of xrdp.ini/sesman.ini and a per-run TLS cert
# in STATE_DIR; /etc/xrdp is not modified. Pids: STATE_DIR/{xrdp,sesman}.pid,
# logs: STATE_DIR/{xrdp,sesman}.log (+ .out for stdout/stderr).
# Limitation: xrdp always reaches sesman on the port in /etc/xrdp/sesman.ini
# (ListenPort, 3350), so only one such server can run on a machine at a time.
#
# Exit: 0 ok, 1 failure (reason on stderr), 2 usage.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TW_RDP_USER="${TW_RDP_USER:-twtest}"
SESSION_SCRIPT_NAME=".tw-rdp-session.sh"

die() { echo "rdp-server.sh: $*" >&2; exit 1; }
usage() { echo "usage: rdp-server.sh start PORT STATE_DIR | stop STATE_DIR" >&2; exit 2; }

listening() { # port -> 0 if some socket listens on it
  [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

tree() { # pid -> pid and all descendants
  local p c
  for p in "$@"; do
    alive "$p" || continue
    echo "$p"
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree "$c"; done
  done
}

sesman_port() {
  local p
  p="$(awk -F= '/^\[/{g=($0=="[Globals]")} g && $1 ~ /^[ \t]*ListenPort[ \t]*$/ {gsub(/[ \t\r]/,"",$2); print $2; exit}' /etc/xrdp/sesman.ini 2>/dev/null)"
  echo "${p:-3350}"
}

cmd_stop() {
  local sd="$1" pids=() p i
  for f in xrdp sesman; do
    p="$(cat "$sd/$f.pid" 2>/dev/null || true)"
    [ -n "$p" ] || continue
    pids+=($(tree "$p"))
  done
  # Session processes are children of sesman, but some (dbus, ssh-agent, ...)
  # may double-fork away: the test user is dedicated, so sweep its processes too.
  if [ "$TW_RDP_USER" != root ] && id -u "$TW_RDP_USER" >/dev/null 2>&1; then
    pids+=($(pgrep -u "$TW_RDP_USER" 2>/dev/null || true))
  fi
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 1 50); do # <= 5 s
      local left=()
      for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
      [ "${#left[@]}" -eq 0 ] && break
      sleep 0.1
    done
    for p in "${pids[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    # late-forked user processes
    if [ "$TW_RDP_USER" != root ] && id -u "$TW_RDP_USER" >/dev/null 2>&1; then
      pkill -KILL -u "$TW_RDP_USER" 2>/dev/null || true
    fi
    sleep 0.2
  fi
  rm -f "$sd/xrdp.pid" "$sd/sesman.pid"
  # stale pid files make the next xrdp/sesman refuse to start
  for f in /run/xrdp/xrdp.pid /run/xrdp/xrdp-sesman.pid; do
    p="$(cat "$f" 2>/dev/null || true)"
    if [ -f "$f" ] && ! alive "$p"; then rm -f "$f"; fi
  done
  return 0
}

cmd_start() {
  local port="$1" sd="$2" sport i
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "bad port '$port'"
  [ "$(id -u)" = 0 ] || die "must run as root"
  for b in xrdp xrdp-sesman openssl ss; do command -v "$b" >/dev/null || die "missing $b (run setup.sh)"; done
  [ -f /etc/X11/xrdp/xorg.conf ] || die "xorgxrdp not installed (run setup.sh)"
  mkdir -p "$sd" || die "cannot create $sd"
  sd="$(cd "$sd" && pwd)"

  # test user + its session script (idempotent, no apt)
  bash "$HERE/setup.sh" user >/dev/null || die "could not prepare user $TW_RDP_USER"

  sport="$(sesman_port)"
  [ "$sport" != "$port" ] || die "port $port is the sesman port"
  listening "$port" && die "127.0.0.1:$port already in use"
  listening "$sport" && die "sesman port $sport already in use (another xrdp-sesman running?)"

  # runtime dirs the systemd unit would normally create
  install -d -m 0755 /run/xrdp
  install -d -m 3777 /run/xrdp/sockdir
  for f in /run/xrdp/xrdp.pid /run/xrdp/xrdp-sesman.pid; do
    p="$(cat "$f" 2>/dev/null || true)"
    if [ -f "$f" ] && ! alive "$p"; then rm -f "$f"; fi
  done

  # per-run self-signed certificate (xrdp runs as root here, reads it directly)
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -keyout "$sd/key.pem" -out "$sd/cert.pem" >/dev/null 2>&1 || die "openssl failed"
  chmod 600 "$sd/key.pem"

  cat > "$sd/xrdp.ini" <<EOF
[Globals]
ini_version=1
fork=true
port=tcp://127.0.0.1:$port
use_vsock=false
tcp_nodelay=true
tcp_keepalive=true
security_layer=tls
crypt_level=high
certificate=$sd/cert.pem
key_file=$sd/key.pem
ssl_protocols=TLSv1.2, TLSv1.3
; without this a wrong password leaves the client on xrdp's login dialog forever
require_credentials=true
autorun=Xorg
allow_channels=true
allow_multimon=true
bitmap_cache=true
bitmap_compression=true
bulk_compression=true
max_bpp=32
new_cursors=true
use_fastpath=both

[Logging]
LogFile=$sd/xrdp.log
LogLevel=INFO
EnableSyslog=false

[Channels]
rdpdr=false
rdpsnd=false
drdynvc=false
cliprdr=false
rail=false
xrdpvr=false
tcutils=false

[Xorg]
name=Xorg
lib=libxup.so
username=ask
password=ask
ip=127.0.0.1
port=-1
code=20
EOF

  cat > "$sd/sesman.ini" <<EOF
[Globals]
ListenAddress=127.0.0.1
ListenPort=$sport
EnableUserWindowManager=true
UserWindowManager=$SESSION_SCRIPT_NAME
DefaultWindowManager=startwm.sh
ReconnectScript=reconnectwm.sh

[Security]
AllowRootLogin=false
MaxLoginRetry=4
AlwaysGroupCheck=false

[Sessions]
X11DisplayOffset=10
MaxSessions=50
KillDisconnected=true
DisconnectedTimeLimit=0
IdleTimeLimit=0
Policy=Default

[Logging]
LogFile=$sd/sesman.log
LogLevel=INFO
EnableSyslog=false

[Xorg]
param=/usr/lib/xorg/Xorg
param=-config
param=xrdp/xorg.conf
param=-noreset
param=-nolisten
param=tcp
param=-logfile
param=.xorgxrdp.%s.log

[Chansrv]
FuseMountName=thinclient_drives
FileUmask=077

[ChansrvLogging]
LogLevel=INFO
EnableSyslog=false
EOF

  setsid xrdp-sesman --nodaemon --config "$sd/sesman.ini" </dev/null >"$sd/sesman.out" 2>&1 &
  echo $! > "$sd/sesman.pid"
  for i in $(seq 1 100); do # <= 10 s
    listening "$sport" && break
    alive "$(cat "$sd/sesman.pid")" || break
    sleep 0.1
  done
  if ! listening "$sport"; then
    tail -5 "$sd/sesman.out" "$sd/sesman.log" >&2 2>/dev/null
    cmd_stop "$sd"; die "xrdp-sesman did not start"
  fi

  setsid xrdp --nodaemon --config "$sd/xrdp.ini" </dev/null >"$sd/xrdp.out" 2>&1 &
  echo $! > "$sd/xrdp.pid"
  for i in $(seq 1 100); do # <= 10 s
    listening "$port" && break
    alive "$(cat "$sd/xrdp.pid")" || break
    sleep 0.1
  done
  if ! listening "$port"; then
    tail -5 "$sd/xrdp.out" "$sd/xrdp.log" >&2 2>/dev/null
    cmd_stop "$sd"; die "xrdp did not start"
  fi
  echo "rdp-server: xrdp on 127.0.0.1:$port (pid $(cat "$sd/xrdp.pid")), sesman on :$sport (pid $(cat "$sd/sesman.pid")), state $sd"
}

case "${1:-}" in
  start) [ $# -eq 3 ] || usage; cmd_start "$2" "$3" ;;
  stop)  [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
  *) usage ;;
esac
