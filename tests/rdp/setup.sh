#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) for the real-RDP end-to-end test.
#
#   setup.sh            install packages + create/refresh the test user
#   setup.sh packages   only the apt packages
#   setup.sh user       only the test user and its session script (no apt)
#
# Idempotent. Env: TW_RDP_USER (default twtest), TW_RDP_PASS (default tw-Test-Pass-1).
set -euo pipefail

TW_RDP_USER="${TW_RDP_USER:-twtest}"
TW_RDP_PASS="${TW_RDP_PASS:-tw-Test-Pass-1}"
# Colour the session paints on its root window; rdp-client.sh looks for it.
TW_RDP_MARKER="${TW_RDP_MARKER:-#208040}"
SESSION_SCRIPT_NAME=".tw-rdp-session.sh"

PACKAGES=(
  xrdp xorgxrdp xserver-xorg-core   # RDP server + its Xorg backend
  freerdp2-x11                      # xfreerdp client
  xvfb xauth                        # display for the client
  x11-apps                          # xwd (client screenshots)
  x11-xserver-utils                 # xsetroot (session marker colour)
  xterm xfonts-base                 # something visible in the session
  python3 openssl iproute2 procps   # screenshot check, per-run TLS cert, ss, ps
  nftables                          # network-namespace tests (tests/tests/networks.rs): ip netns, nft
)

die() { echo "setup.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

do_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # update only if the lists are empty (fresh image) or install fails
    if ! apt-get install -y "${missing[@]}"; then
      apt-get update
      apt-get install -y "${missing[@]}"
    fi
  fi
  # xrdp's postinst does not start anything without systemd; nothing else to do.
}

do_user() {
  if ! id "$TW_RDP_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$TW_RDP_USER"
  fi
  echo "$TW_RDP_USER:$TW_RDP_PASS" | chpasswd
  local home
  home="$(getent passwd "$TW_RDP_USER" | cut -d: -f6)"
  [ -d "$home" ] || { mkdir -p "$home"; chown "$TW_RDP_USER:" "$home"; }
  # Session program started by xrdp-sesman (UserWindowManager in the private
  # sesman.ini written by rdp-server.sh). Paints the marker colour, then keeps
  # the session alive with an xterm (or sleep). No Xsession/dbus involved.
  local s="$home/$SESSION_SCRIPT_NAME"
  cat > "$s.tmp" <<EOF
#!/bin/sh
# written by tests/rdp/setup.sh
export DBUS_SESSION_BUS_ADDRESS=disabled:
xsetroot -solid '$TW_RDP_MARKER' || true
if command -v xterm >/dev/null 2>&1; then
  exec xterm -geometry 60x8+20+20 -title tw-rdp-session
fi
exec sleep 86400
EOF
  chmod 0755 "$s.tmp"
  chown "$TW_RDP_USER:" "$s.tmp"
  mv -f "$s.tmp" "$s"
}

case "${1:-all}" in
  all) do_packages; do_user ;;
  packages) do_packages ;;
  user) do_user ;;
  *) die "usage: setup.sh [all|packages|user]" ;;
esac
