"""Postmark batch payloads built straight from a delivery.

The bulk dispatcher posts up to 500 messages per call to Postmark's batch endpoint. Building each
one as a Django message and letting Anymail turn it into Postmark's JSON costs about a
millisecond a message, half of it parsing the addresses we have just formatted. This builds the
same JSON from the same parts (`channels.email.email_parts`) directly; a test holds it equal to
what Anymail's Postmark backend builds. It is only used when nothing can change what Anymail would
send: no `pre_send` / `post_send` receivers and no `SEND_DEFAULTS`.
"""

from __future__ import annotations

import base64
import re
from email.charset import Charset

from anymail.signals import post_send, pre_send
from anymail.utils import EmailAddress, parse_address_list
from django.conf import settings

from notifications.channels.email import email_parts
from notifications.models import Delivery

UTF8 = Charset("utf-8")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# An address `email.headerregistry.Address` takes apart and puts back as it was: a dot-atom
# local part and an ASCII host name (what contact points almost always are).
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# A display name it leaves unquoted: ASCII without RFC 5322 specials (an RFC 2047 word is one).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9 !#$%&'*+/=?^_`{|}~-]*")


def direct_payloads_allowed(connection) -> bool:
    return not (pre_send.has_listeners() or post_send.has_listeners() or connection.send_defaults)


class PostmarkPayloads:
    """Postmark's JSON for each delivery, for one open Anymail Postmark connection."""

    def __init__(self, connection) -> None:
        self.idna_encode = connection.idna_encode
        self.stream = connection.message_stream
        [sender] = parse_address_list([settings.DEFAULT_FROM_EMAIL])
        self.sender = sender.format(idna_encode=self.idna_encode)

    def recipient(self, name: str, address: str) -> str:
        """What Anymail makes of `channels.email.recipient(name, address)`, without parsing it:
        an ASCII address keeps formataddr's RFC 2047 name, an IDN address the name as is."""
        if address.isascii() and not name.isascii():
            name = UTF8.header_encode(name)
        if _PLAIN_NAME.fullmatch(name) and _PLAIN_ADDRESS.fullmatch(address):
            # What the parse below gives back for these, unchanged (a tenth of the time).
            return f"{name} <{address}>" if name else address
        return EmailAddress(name, address).format(idna_encode=self.idna_encode)

    def payload(self, delivery: Delivery) -> dict:
        parts = email_parts(delivery)
        data: dict = {}
        if self.stream is not None:
            data["MessageStream"] = self.stream
        data["From"] = self.sender
        data["To"] = self.recipient(parts.name, parts.address)
        data["Subject"] = parts.subject
        data["Headers"] = [{"Name": name, "Value": value} for name, value in parts.headers.items()]
        data["TextBody"] = parts.text
        if parts.html:
            data["HtmlBody"] = parts.html
        if parts.attachment is not None:
            name, content, mimetype = parts.attachment
            data["Attachments"] = [
                {
                    "Name": name,
                    "Content": base64.b64encode(content).decode("ascii"),
                    "ContentType": mimetype,
                }
            ]
        data["Metadata"] = parts.metadata
        data["Tag"] = parts.tag
        data["TrackOpens"] = True
        return data
