"""A scripted SMTP next hop for ringmx's delivery tests, on aiosmtpd (Debian python3-aiosmtpd).

Usage: nexthop.py PORT DIR [smtputf8]

Listens on 127.0.0.1:PORT, offering SMTPUTF8 (RFC 6531) when the third argument says so
(aiosmtpd offers 8BITMIME always). RCPT TO an address whose local part starts with "refuse" gets
"550 5.1.1 ... User unknown"; others are accepted. Each transaction is written to DIR as
<n>.eml (the message bytes exactly as received, after dot-unstuffing) beside <n>.json (the
envelope: {"from": ..., "to": [...], "mail_options": [...]}, "" for <>; the options are MAIL's
parameters, upper case), each file renamed into place once whole. Prints
"ready" once listening; stopped by a signal.
"""
import itertools
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out):
        self.out = out
        self.n = itertools.count()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("refuse"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        i = next(self.n)
        base = os.path.join(self.out, str(i))
        with open(base + ".json.tmp", "w") as f:
            # aiosmtpd spells the null reverse-path "<>"; the tests compare with "".
            sender = "" if envelope.mail_from == "<>" else envelope.mail_from
            json.dump(
                {"from": sender, "to": envelope.rcpt_tos, "mail_options": envelope.mail_options},
                f,
            )
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".json.tmp", base + ".json")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 Ok: queued as %d" % i


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    smtputf8 = sys.argv[3:] == ["smtputf8"]
    os.makedirs(out, exist_ok=True)
    c = Controller(Handler(out), hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    c.start()
    print("ready", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    c.stop()


if __name__ == "__main__":
    main()
