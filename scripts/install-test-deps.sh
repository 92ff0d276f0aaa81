#!/usr/bin/env bash
# Installs the real SMTP clients the integration tests drive (Debian/Ubuntu): Postfix's
# smtp-source/smtp-sink (the Postfix daemon itself stays unconfigured and never starts),
# swaks, curl and python3. Idempotent; does nothing when they are all present.
set -euo pipefail
need=0
for bin in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/bin/swaks /usr/bin/curl /usr/bin/python3; do
  [ -x "$bin" ] || need=1
done
[ "$need" = 1 ] || exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to apt-get install postfix swaks curl python3" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postfix swaks curl python3 >/dev/null
echo "install-test-deps: installed postfix (tools only), swaks, curl, python3"
