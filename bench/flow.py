"""
The webmail messenger's whole flow as a benchmark: two appliances on this
machine, set up through the API as the webmail messenger quick setup guide
sets up a gateway (section 3) and a webmail appliance (sections 2 and 4),
and Postfix's smtp-source and smtp-sink as the internet:

    smtp-source → gateway (mail to partner.example must be encrypted; no
      certificate: the webmail tunnel, signed and encrypted)
    → webmail appliance (relay recipient: decrypted, signature and signer
      checked, the original stored in the recipient's mailbox)
    → a new-message notice to the recipient → smtp-sink, which counts them.

The same run measures the gateway's pass-through rate, the reference the
target is set against: the same smtp-source load to recipients at
plain.example (encryption not required), which the gateway delivers to
the same smtp-sink.

Each message is 10 KB and has one recipient; the messages are spread over a
pool of 50 recipients (--recipients) and sent 20 sessions at a time, each
recipient's one after another.  Before the measured runs, one message per
recipient of the pool goes through the flow: its sign-up invitation is
captured and followed on the portal (a password set), as a recipient does
once, so that in the measured run every recipient has an account and each
message ends in a new-message notice, the steady state of a webmail
appliance.

It prints, per path, the accepted rate (messages per second until
smtp-source is done: each message on the gateway's disk before its 250)
and the delivered rate (until the sink has counted them all: for the flow,
one notice per message, counted from the first message sent), and the
flow's delivered rate as a share of pass-through's; the target is >= 0.4.
It checks that nothing else came out (no bounce, nothing to the
postmaster) and that the webmail appliance's MPA log names a notice for
each message.  Needs the Debian postfix package (smtp-source, smtp-sink)
and root (smtp-sink runs as nobody).

With --profile DIR, py-spy (pip install py-spy) samples both appliances
and their processing workers during the measured flow run (100 Hz,
without pausing them); it writes each one's raw stacks to DIR and prints,
per process, how busy each thread was and the cipherd functions the busy
samples were in (by share of all of that process's busy samples, callees
included).

    .venv/bin/python bench/flow.py                 # 1,000 messages per path
    .venv/bin/python bench/flow.py --messages 300  # quicker, noisier
    .venv/bin/python bench/flow.py --profile /tmp/flow-profile
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mta import SESSIONS, Cipherd, Profile, SmtpSink, measure, send_to_pool  # noqa: E402

from tests.processes import children  # noqa: E402
from tests.sink import Sink  # noqa: E402
from tests.test_webmail_appliance import sign_up, text_of  # noqa: E402 - the browser's part

SIZE = 10 * 1024
TARGET = 0.4
SENDER = "bench@example.org"
RELAY = "webmail@webmail.local"
WEBMAIL_SENDER = "webmail-sender@example.org"
POSTMASTER = "postmaster@webmail.example"
NOTIFICATION_SENDER = "notify@webmail.example"
# A passphrase the portal's strength check accepts.
ACCOUNT_PASSWORD = "correct horse battery staple"  # noqa: S105 - throwaway accounts


class Pair:
    """
    A gateway and a webmail appliance set up as the guide does.  Mail out
    of either (notices, bounces, the postmaster's) goes to C{capture} until
    L{count_notices_at} sends the notices to the counting sink instead.
    """

    def __init__(self, sink: SmtpSink, capture: Sink, workers: int | None = None) -> None:
        self.webmail = Cipherd(workers=workers)
        try:
            self.gateway = Cipherd(workers=workers)
        except BaseException:
            self.webmail.close()
            raise
        try:
            self._set_up(sink, capture)
            self.webmail.wait_for_workers()
            self.gateway.wait_for_workers()
        except BaseException:
            self.close()
            raise

    def _set_up(self, sink: SmtpSink, capture: Sink) -> None:
        self._capture = {"host": "[127.0.0.1]", "port": capture.port}
        # 2.3.1-2.3.9: relay domain, MTA hostname, internal relay host,
        # relay recipient, portal base URL, notification sender, postmaster.
        self.webmail.api("PATCH", "/mta", {
            "relay_domains": ["webmail.local"], "my_hostname": "webmail.example",
            "internal_relay_host": f"[127.0.0.1]:{capture.port}",
            "transports": self._webmail_transports(self._capture)})
        self.webmail.api("PATCH", "/settings/global", {
            "relay_recipient": RELAY, "portal_base_url": self.webmail.portal_url,
            "notification_sender": NOTIFICATION_SENDER, "postmaster": POSTMASTER})
        # 2.3.11-2.3.12: the webmail tunnel certificate, exported.
        relay = self.webmail.api("POST", "/webmail/relay-certificate", {})
        relay_pem = self.webmail.request("GET", f"/certificates/{relay['thumbprint']}.pem")
        # 2.3.14: authorized recipients.
        self.webmail.api("PUT", "/mta/authorized-recipients", ["example.org"])
        # 3.2-3.3: imported into the gateway and trusted.
        (imported, *_) = self.gateway.api("POST", "/certificates?skip_self_signed=false",
                                          raw=relay_pem)["imported"]
        self.gateway.api("POST", "/ctl", {"thumbprint": imported, "status": "whitelisted"})
        # 3.4-3.9: webmail enabled, its recipient and sender, the gateway
        # tunnel certificate, exported; mail to partner.example must be
        # encrypted, to plain.example need not be.
        self.gateway.api("PATCH", "/settings/global", {
            "webmail_enabled": True, "webmail_recipient": RELAY,
            "webmail_sender": WEBMAIL_SENDER})
        self.gateway.api("PATCH", "/settings/domains/partner.example",
                         {"encrypt_mode": "mandatory"})
        sender = self.gateway.api("POST", "/webmail/sender-certificate", {})
        sender_pem = self.gateway.request("GET", f"/certificates/{sender['thumbprint']}.pem")
        # 3.10: the SMTP transport to webmail.local; pass-through mail to the
        # counting sink, anything back to the sender (a bounce) captured.
        self.gateway.api("PATCH", "/mta", {"my_hostname": "gateway.example", "transports": [
            {"domain": "webmail.local", "host": "[127.0.0.1]",
             "port": self.webmail.smtp_port},
            {"domain": "plain.example", "host": "[127.0.0.1]", "port": sink.port},
            {"domain": "example.org", **self._capture}]})
        # 4.1-4.2: the gateway tunnel certificate imported on the webmail
        # appliance and trusted.
        (imported, *_) = self.webmail.api("POST", "/certificates?skip_self_signed=false",
                                          raw=sender_pem)["imported"]
        self.webmail.api("POST", "/ctl", {"thumbprint": imported, "status": "whitelisted"})
        self._sink = {"host": "[127.0.0.1]", "port": sink.port}

    def _webmail_transports(self, notices_to: dict[str, object]) -> list[dict[str, object]]:
        return [{"domain": "partner.example", **notices_to},
                *({"domain": d, **self._capture} for d in ("example.org", "webmail.example"))]

    def count_notices_at(self) -> None:
        """
        From now on the notices to partner.example go to the counting sink.
        """
        self.webmail.api("PATCH", "/mta", {"transports": self._webmail_transports(self._sink)})

    def mpa_lines(self, text: str) -> int:
        """
        How many lines of the webmail appliance's MPA log (rotated files
        included) contain C{text}.
        """
        logs = sorted((self.webmail.data_dir / "logs").glob("mpa.log*"))
        return sum(line.count(text) for path in logs
                   for line in path.read_text(errors="replace").splitlines())

    def close(self) -> None:
        self.gateway.close()
        self.webmail.close()


def make_accounts(pair: Pair, capture: Sink, recipients: list[str]) -> None:
    """
    One message to each recipient through the whole flow; each sign-up
    invitation followed, a password set.
    """
    send_to_pool(pair.gateway.smtp_port, len(recipients), SIZE, sender=SENDER,
                 recipients=recipients)
    invitations = capture.wait_for(len(recipients), timeout=300)
    for invitation in invitations:
        (recipient,) = invitation.recipients
        link = re.search(r"https://\S+/signup\?token=\S+", text_of(invitation))
        if invitation.sender != NOTIFICATION_SENDER or recipient not in recipients or not link:
            sys.exit(f"not a sign-up invitation from the webmail appliance:\n"
                     f"{invitation.content.decode(errors='replace')}")
        answer = sign_up(link.group(0), ACCOUNT_PASSWORD)
        if "Your password is set" not in answer:
            sys.exit(f"signing up {recipient} failed:\n{answer}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--recipients", type=int, default=50)
    parser.add_argument("--workers", type=int,
                        help="[processing] workers of both appliances (default: theirs, 1)")
    parser.add_argument("--profile", type=Path, help="py-spy the measured flow run into DIR")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/flow.py runs Postfix's smtp-sink as nobody: run it as root")
    flow_recipients = [f"user{n}@partner.example" for n in range(options.recipients)]
    plain_recipients = [f"user{n}@plain.example" for n in range(options.recipients)]
    sink, capture = SmtpSink(), Sink()
    pair = None
    try:
        pair = Pair(sink, capture, options.workers)
        make_accounts(pair, capture, flow_recipients)
        pair.count_notices_at()
        # Warm-up of each path, then the measured runs.
        measure(pair.gateway.smtp_port, sink, 50, SIZE, sender=SENDER,
                recipients=plain_recipients)
        measure(pair.gateway.smtp_port, sink, 50, SIZE, sender=SENDER,
                recipients=flow_recipients)
        before = pair.mpa_lines("Sent a new-message notice")
        results = {"pass-through": measure(pair.gateway.smtp_port, sink, options.messages,
                                           SIZE, sender=SENDER, recipients=plain_recipients)}
        profile = options.profile and Profile(options.profile, {
            f"{name}{'' if n == 0 else f' worker {n}'}": pid
            for name, cipherd in (("gateway", pair.gateway), ("webmail", pair.webmail))
            for n, pid in enumerate([cipherd.pid, *children(cipherd.pid)])})
        results["webmail flow"] = measure(pair.gateway.smtp_port, sink, options.messages, SIZE,
                                          sender=SENDER, recipients=flow_recipients)
        profiled = profile.stop() if profile else ""
        notices = pair.mpa_lines("Sent a new-message notice") - before
        invitations = pair.mpa_lines("Sent a sign-up invitation")
        stray = capture.state.messages[len(flow_recipients):]
    finally:
        if pair is not None:
            pair.close()
        sink.close()
        capture.close()

    print(f"\n{options.messages} messages of 10 KB per path, one recipient each out of "
          f"{options.recipients}, {min(SESSIONS, options.recipients)} sessions")
    print("pass-through: smtp-source → gateway → smtp-sink")
    print("webmail flow: smtp-source → gateway (tunnel: signed, encrypted) → webmail "
          "appliance (decrypted, verified, stored) → new-message notice → smtp-sink")
    print(f"{'path':13} {'accepted/s':>11} {'delivered/s':>12}")
    print("-" * 38)
    for label, (accepted, delivered) in results.items():
        print(f"{label:13} {accepted:11.1f} {delivered:12.1f}")
    ratio = results["webmail flow"][1] / results["pass-through"][1]
    print(f"webmail flow / pass-through, delivered: {ratio:.2f} (target >= {TARGET}): "
          f"{'PASS' if ratio >= TARGET else 'FAIL'}")
    print(f"MPA log: {notices} new-message notices in the measured run, {invitations} sign-up "
          f"invitations in all (one per recipient expected)")
    if notices != options.messages or invitations != options.recipients:
        print("UNEXPECTED: not one notice per message and one invitation per recipient")
    if profiled:
        print(f"\npy-spy during the measured flow run (raw stacks in {options.profile}):")
        print(profiled)
    if stray:
        print(f"UNEXPECTED: {len(stray)} other message(s) out, e.g. " + ", ".join(
            f"<{m.sender}> → {m.recipients}" for m in stray[:5]))


if __name__ == "__main__":
    main()
