#!/usr/bin/env bash
# Installs the real peers the integration tests drive (Debian/Ubuntu):
# - Postfix's smtp-source/smtp-sink and its MTA (the system instance stays unconfigured and never
#   starts; tests run private instances in temporary directories as relays and next hops);
# - swaks (with Net::SSLeay for `swaks --tls`), curl, python3, openssl (`s_client -starttls`);
# - HAProxy (the PROXY protocol tests run it as a private foreground child);
# - dnsmasq-base (the DNS server of the MX route and DNSBL tests, a private foreground child on
#   loopback; the -base package has no system service);
# - Dovecot's LMTP server (the delivery and recipient verification tests run private instances);
# - aiosmtpd for Debian's python3 (the scripted next hops of the delivery and bounce tests).
# The packaged services are neither configured nor needed. Idempotent; does nothing when
# everything is present.
set -euo pipefail
packages="postfix swaks curl python3 openssl libnet-ssleay-perl haproxy dnsmasq-base dovecot-core dovecot-lmtpd python3-aiosmtpd"
need=0
for bin in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/bin/swaks /usr/bin/curl /usr/bin/python3 /usr/bin/openssl /usr/sbin/haproxy /usr/sbin/dnsmasq /usr/sbin/dovecot /usr/lib/dovecot/lmtp; do
  [ -x "$bin" ] || need=1
done
perl -MNet::SSLeay -e 1 2>/dev/null || need=1
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need=1
[ "$need" = 1 ] || exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to apt-get install $packages" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
# shellcheck disable=SC2086 # the package list splits on purpose
$SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
echo "install-test-deps: installed $packages"
