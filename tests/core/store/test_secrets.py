"""Credentials at the core: the scanner (tests/helpers/secrets.py) finds a secret also when encoded,
and ``error_summary`` redacts credentials (URL userinfo, AWS key ids) from the one line it makes.
Everything Prefect keeps about a run is scanned in tests/flows/build/test_secrets.py."""

from __future__ import annotations

import base64
import json
import pickle
import uuid

from tests.helpers.secrets import KEY_ID, SECRET, leaks


def test_scanner_finds_encoded_secrets():
    """Positive control: the scan sees a secret inside a base64 pickle inside JSON."""
    record = json.dumps({"result": base64.b64encode(pickle.dumps({"k": SECRET})).decode()})
    assert set(leaks(record)) == {SECRET, SECRET[:16]}
    assert leaks(f"error: key {KEY_ID} rejected") == [KEY_ID]
    assert leaks("nothing to see") == []


def test_error_summary_redacts_credentials(monkeypatch):
    """Defence in depth for messages built from backend errors (targets.error_summary)."""
    from topozarr_core.store.errors import error_summary

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    err = RuntimeError(f"request failed: Credential={KEY_ID}/20250101/us-east-1/s3, secret {SECRET}\n\n"
                       "Debug source:\nGeneric { ... }")
    summary = error_summary(err)
    assert leaks(summary) == []
    assert summary.startswith("RuntimeError: request failed: Credential=***") and "Debug source" not in summary
    xml = RuntimeError('403 Forbidden: <?xml version="1.0"?><Error><Code>SignatureDoesNotMatch</Code>'
                       f"<Message>bad signature</Message><AWSAccessKeyId>{uuid.uuid4().hex}</AWSAccessKeyId></Error>")
    assert error_summary(xml) == "RuntimeError: 403 Forbidden SignatureDoesNotMatch: bad signature"
