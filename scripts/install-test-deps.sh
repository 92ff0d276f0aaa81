#!/usr/bin/env bash
# Installs the real SMTP clients the integration tests drive (Debian/Ubuntu): Postfix's
# smtp-source/smtp-sink and its MTA (the system instance stays unconfigured and never starts;
# one test runs a private instance in a temporary directory as a relay),
# swaks (with Net::SSLeay for `swaks --tls`), curl, python3, openssl (`s_client -starttls`) and
# HAProxy (run by the PROXY protocol tests as a private foreground child; the packaged service
# is neither configured nor needed), and aiosmtpd for Debian's python3 (the scripted next hop of
# the bounce tests, tests/it/peers/nexthop.py).
# Idempotent; does nothing when they are all present.
set -euo pipefail
need=0
for bin in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/bin/swaks /usr/bin/curl /usr/bin/python3 /usr/bin/openssl /usr/sbin/haproxy; do
  [ -x "$bin" ] || need=1
done
perl -MNet::SSLeay -e 1 2>/dev/null || need=1
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need=1
[ "$need" = 1 ] || exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to apt-get install postfix swaks curl python3 openssl libnet-ssleay-perl haproxy python3-aiosmtpd" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postfix swaks curl python3 openssl libnet-ssleay-perl haproxy python3-aiosmtpd >/dev/null
echo "install-test-deps: installed postfix (tools only), swaks, curl, python3, openssl, Net::SSLeay, haproxy, python3-aiosmtpd"
