"""Parses a DSN with Python's email package and prints what ringmx's tests check, as JSON.

Usage: parse_dsn.py FILE
"""
import email
import email.policy
import json
import sys

with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)

out = {
    "defects": [str(d) for d in msg.defects],
    "from": str(msg["From"]),
    "subject": str(msg["Subject"]),
    "auto_submitted": str(msg["Auto-Submitted"]),
    "message_id": str(msg["Message-ID"]),
    "date": str(msg["Date"]),
    "content_type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "parts": [p.get_content_type() for p in msg.iter_parts()],
}
parts = list(msg.iter_parts())
out["text"] = parts[0].get_content()
# message/delivery-status: a list of header blocks, the per-message one first.
blocks = parts[1].get_payload()
out["per_message"] = {k.lower(): str(v) for k, v in blocks[0].items()}
out["per_rcpt"] = [{k.lower(): " ".join(str(v).split()) for k, v in b.items()} for b in blocks[1:]]
headers = parts[2].get_payload(decode=True) or b""
out["original_headers"] = headers.decode("utf-8", "replace")
print(json.dumps(out))
