"""Errors that reach people: one line, the root cause, never a credential.

Every layer that turns a backend's exception into a message (targets, the retrying object store, the
flows' failure lines) uses these, so the redaction rules live in one place.
"""

from __future__ import annotations

import os
import re


class TargetError(ValueError):
    """The target cannot be written; the message says why (never includes credentials)."""


#: Environment variables whose values must never appear in a message.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_ACCOUNT_KEY",
                   "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_SERVICE_ACCOUNT_KEY")
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")  # s3://KEY:SECRET@bucket/...
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_STRUCT_CODE = re.compile(r'code: "([^"]*)", message: "([^"]*)"')  # Rust debug form (icechunk / AWS SDK)
_HTTP_STATUS = re.compile(r"\b([45]\d\d [A-Z][A-Za-z ]*?):")
_DUMP = re.compile(r"\n\s*\n\s*(?:Debug source:|context:)")


def redact(text: str) -> str:
    """``text`` with credential values from the environment, URL userinfo (``s3://KEY:SECRET@...``) and AWS
    key ids replaced by ``***``."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 8:  # real keys are 20+ characters; shorter values would mask ordinary words
            text = text.replace(value, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    return _AWS_KEY_ID.sub("***", text)


def root_cause(err: BaseException) -> BaseException:
    """The error at the bottom of ``err``'s chain (``raise ... from``, or raised while handling): what
    an operator has to act on (a full disk, a refused credential), not the layers that passed it on."""
    seen = {id(err)}
    while True:
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def error_summary(err: BaseException, limit: int = 300) -> str:
    """One line for people from an object-store or Icechunk error: the service's error code and message,
    without request dumps, Rust debug structures or response bodies, and with credentials redacted.

    :param err: the error.
    :param limit: the most characters returned.
    """
    text = str(err)
    if m := _XML_CODE.search(text):  # an S3-style XML error body
        message = _XML_MESSAGE.search(text)
        status = _HTTP_STATUS.search(text)
        summary = f"{m.group(1)}: {message.group(1) if message else ''}".rstrip(": ")
        summary = f"{status.group(1)} {summary}" if status else summary
    elif m := _STRUCT_CODE.search(text):
        summary = f"{m.group(1)}: {m.group(2)}"
    else:
        summary = " ".join(_DUMP.split(text, maxsplit=1)[0].split())
    summary = redact(summary)
    if len(summary) > limit:
        summary = summary[: limit - 3] + "..."
    return f"{type(err).__name__}: {summary}" if summary else type(err).__name__


def store_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the storage backend said no" (I/O, object store, Icechunk storage)."""
    import icechunk
    import obstore.exceptions

    return (OSError, obstore.exceptions.BaseError, icechunk.IcechunkError)
