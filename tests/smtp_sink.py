"""A real SMTP server for the e-mail tests.

Runs aiosmtpd on 127.0.0.1:PORT and writes every message it accepts to
OUT_DIR as NNNNN.json: the envelope (sender, recipients), the message as
Python's standard `email` package parses it (headers, decoded subject, the
plain-text body) and the raw bytes. Prints "ready" once it listens and runs
until its stdin closes (the test's handle is dropped) or it is killed.

Usage: python3 smtp_sink.py PORT OUT_DIR
"""

import email
import email.policy
import json
import os
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "received_at": time.time(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "headers": [[name, str(value)] for name, value in message.items()],
            "subject": str(message.get("subject", "")),
            "content_type": message.get_content_type(),
            "body": body.get_content() if body is not None else None,
            "raw": raw.decode("utf-8", "replace"),
        }
        with self.lock:
            self.count += 1
            name = "%05d.json" % self.count
        partial = os.path.join(self.out_dir, "." + name + ".partial")
        with open(partial, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(partial, os.path.join(self.out_dir, name))
        return "250 OK"


def main():
    port = int(sys.argv[1])
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    controller = Controller(Sink(out_dir), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
