#!/usr/bin/env bash
# Real RDP client for the end-to-end test: FreeRDP 2 xfreerdp under a private Xvfb.
#
#   rdp-client.sh HOST PORT USER PASSWORD
#
# Connects with the TLS security layer (/sec:tls /cert:ignore) and decides:
#   exit 0  desktop appeared: the session's marker colour (painted by the
#           session script that setup.sh installs for the test user, i.e. only
#           after PAM login + Xorg session start) reached the client's screen
#   exit 3  login refused: xfreerdp was disconnected with ERRINFO_LOGOFF_BY_USER
#           (xfreerdp exit 12) before any desktop pixels, which is what xrdp does
#           on a failed login when require_credentials=true
#   exit 4  timeout or anything else (connection failure, crash, ...)
#   exit 2  usage
# Prints one line "rdp-client: <verdict>: <reason> (<secs>s)" on stdout; on exit
# 4 the tail of the xfreerdp log goes to stderr.
#
# Env: TW_RDP_TIMEOUT (s, default 40: bounds the whole run; cleanup adds <= 3 s),
#      TW_RDP_MARKER (default #208040, must match setup.sh's),
#      TW_RDP_HOLD (s to stay connected after success, added to the run, default 0;
#      a drop during the hold gives exit 4),
#      TW_RDP_LOG (copy xfreerdp's log to this file), TW_RDP_SHOT (save the
#      last screenshot, XWD format, to this file).
set -uo pipefail

[ $# -eq 4 ] || { echo "usage: rdp-client.sh HOST PORT USER PASSWORD" >&2; exit 2; }
HOST="$1" PORT="$2" USER_="$3" PASS="$4"
TIMEOUT="${TW_RDP_TIMEOUT:-40}"
MARKER="${TW_RDP_MARKER:-#208040}"
HOLD="${TW_RDP_HOLD:-0}"
W=1024 H=768

T0=$(date +%s.%N)
DEADLINE=$(( ${T0%.*} + TIMEOUT ))   # whole run, cleanup (<= 3 s) excluded
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

for b in xfreerdp Xvfb xwd timeout; do
  command -v "$b" >/dev/null || { echo "rdp-client: error: missing $b (run setup.sh)"; exit 4; }
done
PY=/usr/bin/python3; [ -x "$PY" ] || PY="$(command -v python3)" || { echo "rdp-client: error: missing python3"; exit 4; }

TMP="$(mktemp -d /tmp/tw-rdp-client.XXXXXX)"
XVFB_PID="" RDP_PID=""
cleanup() {
  local p i
  exec 2>/dev/null  # xfreerdp may segfault on SIGTERM mid-connect; bash would report it
  for p in $RDP_PID $XVFB_PID; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 1 30); do # <= 3 s
    { [ -n "$RDP_PID" ] && kill -0 "$RDP_PID" 2>/dev/null; } || { [ -n "$XVFB_PID" ] && kill -0 "$XVFB_PID" 2>/dev/null; } || break
    sleep 0.1
  done
  for p in $RDP_PID $XVFB_PID; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${TW_RDP_LOG:-}" ] && cp -f "$TMP/xfreerdp.log" "$TW_RDP_LOG" 2>/dev/null
  [ -n "${TW_RDP_SHOT:-}" ] && cp -f "$TMP/shot.xwd" "$TW_RDP_SHOT" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 4' INT TERM HUP

finish() { # code verdict reason
  echo "rdp-client: $2: $3 ($(elapsed)s)"
  if [ "$1" = 4 ] && [ -f "$TMP/xfreerdp.log" ]; then
    grep -v '^$' "$TMP/xfreerdp.log" | grep -v 'com.freerdp.utils\] - [0-9]*:' | tail -15 >&2
  fi
  exit "$1"
}

# --- private X display -------------------------------------------------------
exec 3>"$TMP/display"
Xvfb -displayfd 3 -screen 0 "${W}x${H}x24" -nolisten tcp -noreset \
  </dev/null >"$TMP/xvfb.log" 2>&1 &
XVFB_PID=$!
exec 3>&-
for i in $(seq 1 100); do # <= 10 s
  [ -s "$TMP/display" ] && break
  [ "$(date +%s)" -lt "$DEADLINE" ] || break
  kill -0 "$XVFB_PID" 2>/dev/null || break
  sleep 0.1
done
DNUM="$(tr -dc 0-9 < "$TMP/display")"
[ -n "$DNUM" ] || finish 4 error "Xvfb did not start: $(tail -1 "$TMP/xvfb.log")"
export DISPLAY=":$DNUM"

# --- client ------------------------------------------------------------------
export HOME="$TMP/home" XDG_CONFIG_HOME="$TMP/home/.config"
mkdir -p "$XDG_CONFIG_HOME"
unset DBUS_SESSION_BUS_ADDRESS XAUTHORITY
case "$HOST" in *:*) TARGET="[$HOST]:$PORT" ;; *) TARGET="$HOST:$PORT" ;; esac
timeout -k 2 "$((TIMEOUT + HOLD + 5))" xfreerdp "/v:$TARGET" "/u:$USER_" "/p:$PASS" \
  /sec:tls /cert:ignore "/size:${W}x${H}" /bpp:24 -clipboard /log-level:INFO \
  </dev/null >"$TMP/xfreerdp.log" 2>&1 &
RDP_PID=$!

# Fraction of (sampled) screen pixels close to the marker colour, from xwd.
check_py='
import struct, sys
d = sys.stdin.buffer.read()
if len(d) < 100: print(0.0); sys.exit()
f = struct.unpack(">25I", d[:100])
hsize, fmt, depth, w, h = f[0], f[2], f[3], f[4], f[5]
byte_order, bpp, bpl = f[7], f[11], f[12]
rm, gm, bm, ncol = f[14], f[15], f[16], f[19]
if fmt != 2 or bpp not in (24, 32): print(0.0); sys.exit()
off = hsize + 12 * ncol
mr = int(sys.argv[1][1:3], 16); mg = int(sys.argv[1][3:5], 16); mb = int(sys.argv[1][5:7], 16)
def sh(m):
    s = 0
    while m and not (m >> s) & 1: s += 1
    return s
rs, gs, bs = sh(rm), sh(gm), sh(bm)
B = bpp // 8; bo = "little" if byte_order == 0 else "big"
tot = hit = 0
for y in range(0, h, 4):
    row = off + y * bpl
    for x in range(0, w, 4):
        p = int.from_bytes(d[row + x * B: row + x * B + B], bo)
        r = (p & rm) >> rs; g = (p & gm) >> gs; b = (p & bm) >> bs
        tot += 1
        if abs(r - mr) <= 12 and abs(g - mg) <= 12 and abs(b - mb) <= 12: hit += 1
print(hit / tot if tot else 0.0)
'

while [ "$(date +%s)" -lt "$DEADLINE" ]; do
  if ! kill -0 "$RDP_PID" 2>/dev/null; then
    wait "$RDP_PID"; rc=$?; RDP_PID=""
    if [ "$rc" = 12 ] || grep -q 'ERRINFO_LOGOFF_BY_USER' "$TMP/xfreerdp.log"; then
      finish 3 refused "login refused: server logged the session off before any desktop (xfreerdp rc=$rc, ERRINFO_LOGOFF_BY_USER)"
    fi
    err="$(grep -oE '(ERRCONNECT|ERRINFO)_[A-Z_]+' "$TMP/xfreerdp.log" | head -1)"
    [ -n "$err" ] || err="$(grep -E '\[(ERROR|FATAL)\]' "$TMP/xfreerdp.log" | grep -v 'com.freerdp.utils\] - [0-9]*:' | tail -1 | sed -E 's/^.*\] - //')"
    finish 4 error "xfreerdp exited rc=$rc before the desktop appeared${err:+: $err}"
  fi
  timeout 5 xwd -root -silent > "$TMP/shot.xwd" 2>/dev/null
  frac="$(timeout 5 "$PY" -c "$check_py" "$MARKER" < "$TMP/shot.xwd" 2>/dev/null || echo 0)"
  if awk -v f="${frac:-0}" 'BEGIN{exit !(f >= 0.2)}'; then
    if [ "$HOLD" != 0 ]; then
      end=$(( $(date +%s) + HOLD ))
      while [ "$(date +%s)" -lt "$end" ]; do
        kill -0 "$RDP_PID" 2>/dev/null || finish 4 error "desktop appeared but the connection dropped during the ${HOLD}s hold"
        sleep 0.5
      done
    fi
    finish 0 ok "desktop appeared: $(awk -v f="$frac" 'BEGIN{printf "%d", f*100}')% of screen shows the session marker $MARKER"
  fi
  sleep 0.5
done
finish 4 timeout "no desktop and no refusal within ${TIMEOUT}s"
