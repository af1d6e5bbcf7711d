"""The Standard Webhooks public test vectors, through our `SignatureVerifier`.

The published example (the spec's and every reference library's `test_sign_function`):
secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id `msg_p5jXN8AQM9LWM0D4loKWxJek`,
timestamp `1614265330`, payload `{"test": 2432232314}`, signature `v1,g0hM9SsE…OLJ1OE=`.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import openai
import pytest
from standardwebhooks import Webhook

from receiver.signatures import SignatureVerifier
from schemas.settings import webhook_key

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# The reference libraries' "invalid signature" vector: the last base64 digit changed.
NEAR_MISS = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
# The reference libraries' multi-signature noise entry.
NOISE = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret, 32 bytes long!!!").decode()
SENT_AT = datetime.fromtimestamp(TIMESTAMP, tz=UTC)
TOLERANCE_SECONDS = 300.0


def verifier(*secrets: str, now: datetime = SENT_AT) -> SignatureVerifier:
    return SignatureVerifier(secrets or (SECRET,), lambda: now, TOLERANCE_SECONDS)


def headers(**overrides: str | None) -> dict[str, str]:
    sent = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": SIGNATURE,
    }
    sent.update(overrides)  # type: ignore[arg-type]
    return {name: value for name, value in sent.items() if value is not None}


def test_library_signs_the_published_vector() -> None:
    assert Webhook(SECRET).sign(msg_id=MSG_ID, timestamp=SENT_AT, data=PAYLOAD.decode()) == (
        SIGNATURE
    )


def test_published_vector_verifies() -> None:
    assert verifier().verify(PAYLOAD, headers()) == MSG_ID


def test_published_vector_verifies_with_an_unprefixed_secret() -> None:
    assert verifier(SECRET.removeprefix("whsec_")).verify(PAYLOAD, headers()) == MSG_ID


@pytest.mark.parametrize("offset", [-TOLERANCE_SECONDS, TOLERANCE_SECONDS], ids=["early", "late"])
def test_published_vector_verifies_at_the_edge_of_tolerance(offset: float) -> None:
    now = SENT_AT + timedelta(seconds=offset)
    assert verifier(now=now).verify(PAYLOAD, headers()) == MSG_ID


@pytest.mark.parametrize(
    "signature",
    [
        f"v1,{NOISE} {SIGNATURE}",
        f"v1,bad {SIGNATURE}",
        f"v2,x {SIGNATURE}",
        f"{SIGNATURE} v1,{NOISE}",
        f"v1,{NOISE} v2,{NOISE} {SIGNATURE} v1,{NOISE}",
        f"v1a,{NOISE} v1 v1, {SIGNATURE}",
    ],
    ids=["noise-first", "bad-first", "v2-first", "good-first", "reference-multi", "junk-entries"],
)
def test_rotation_accepts_the_good_signature_among_several(signature: str) -> None:
    assert verifier().verify(PAYLOAD, headers(**{"webhook-signature": signature})) == MSG_ID


def test_rotation_accepts_when_only_the_second_secret_matches() -> None:
    assert verifier(OTHER_SECRET, SECRET).verify(PAYLOAD, headers()) == MSG_ID


def test_rotation_accepts_a_signature_by_the_new_secret_among_old_ones() -> None:
    new = Webhook(OTHER_SECRET).sign(msg_id=MSG_ID, timestamp=SENT_AT, data=PAYLOAD.decode())
    rotated = headers(**{"webhook-signature": f"{SIGNATURE} {new}"})
    assert verifier(OTHER_SECRET).verify(PAYLOAD, rotated) == MSG_ID
    assert verifier(SECRET).verify(PAYLOAD, rotated) == MSG_ID


def test_tampered_payload_is_refused() -> None:
    assert verifier().verify(b'{"test": 2432232315}', headers()) is None


def test_payload_with_changed_whitespace_is_refused() -> None:
    assert verifier().verify(b'{"test":2432232314}', headers()) is None


def test_tampered_id_is_refused() -> None:
    assert verifier().verify(PAYLOAD, headers(**{"webhook-id": MSG_ID + "x"})) is None


def test_tampered_timestamp_is_refused() -> None:
    stamp = str(TIMESTAMP + 1)
    assert verifier().verify(PAYLOAD, headers(**{"webhook-timestamp": stamp})) is None


@pytest.mark.parametrize("offset", [-301.0, 301.0, -86400.0, 86400.0])
def test_timestamp_outside_tolerance_is_refused(offset: float) -> None:
    """Our clock `offset` seconds from the (correctly signed) timestamp: replay or skew."""
    now = SENT_AT + timedelta(seconds=offset)
    assert verifier(now=now).verify(PAYLOAD, headers()) is None


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    assert verifier().verify(PAYLOAD, headers(**{missing: None})) is None


@pytest.mark.parametrize(
    "signature",
    [
        "",
        " ",
        "v1,",
        "v1",
        "v1,!!!notbase64",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
        "v1,g0hM9SsE-OTPJTGt_tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=,extra",
        NEAR_MISS,
        SIGNATURE.replace("v1,", "v2,"),
        SIGNATURE.replace("v1,", "V1,"),
        SIGNATURE.replace("v1,", "v1;"),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OÉ=",
        "v1,ü",
        "v1,\x00",
        "v1," + "A" * 100_000,
        " ".join(["v1," + NOISE] * 1000),
    ],
    ids=[
        "empty",
        "blank",
        "empty-sig",
        "no-comma",
        "bad-base64",
        "unpadded",
        "urlsafe-alphabet",
        "extra-comma",
        "reference-near-miss",
        "wrong-version",
        "upper-case-version",
        "semicolon",
        "non-ascii-tail",
        "non-ascii",
        "nul",
        "huge",
        "thousand-bad",
    ],
)
def test_malformed_or_wrong_signature_is_refused(signature: str) -> None:
    assert verifier().verify(PAYLOAD, headers(**{"webhook-signature": signature})) is None


def test_good_signature_after_the_first_sixteen_is_ignored() -> None:
    """A header of many entries is cut at MAX_SIGNATURES: no unbounded HMAC work per request."""
    crowded = " ".join([f"v1,{NOISE}"] * 16 + [SIGNATURE])
    assert verifier().verify(PAYLOAD, headers(**{"webhook-signature": crowded})) is None


@pytest.mark.parametrize(
    "stamp",
    ["", "hello", "-1614265330", "1614265330.0", "1e9", " 1614265330", "9" * 40, "١٦١٤٢٦٥٣٣٠"],
    ids=["empty", "word", "negative", "decimal", "exponent", "space", "huge", "arabic-digits"],
)
def test_malformed_timestamp_is_refused(stamp: str) -> None:
    assert verifier().verify(PAYLOAD, headers(**{"webhook-timestamp": stamp})) is None


def test_signature_by_a_different_secret_is_refused() -> None:
    other = Webhook(OTHER_SECRET).sign(msg_id=MSG_ID, timestamp=SENT_AT, data=PAYLOAD.decode())
    assert verifier().verify(PAYLOAD, headers(**{"webhook-signature": other})) is None


def test_non_utf8_body_is_refused_without_raising() -> None:
    assert verifier().verify(b'{"test": "\xff"}', headers()) is None


def test_non_ascii_id_is_refused_without_raising() -> None:
    assert verifier().verify(PAYLOAD, headers(**{"webhook-id": "msg_ü\udcff"})) is None


@pytest.mark.parametrize("secret", [SECRET, "a raw secret, as the dashboard may show it"])
def test_openai_secrets_mean_what_openais_sdk_takes_them_to_mean(secret: str) -> None:
    """OpenAI's SDK decodes a `whsec_` secret and takes any other as its own bytes; a
    delivery its `verify_signature` accepts, ours accepts, and one it refuses, ours does."""
    now = datetime.now(UTC).replace(microsecond=0)
    key = webhook_key(secret, raw_unprefixed=True)
    signed = Webhook(key).sign(msg_id=MSG_ID, timestamp=now, data=PAYLOAD.decode())
    sent = headers(**{"webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signed})
    sdk = openai.OpenAI(api_key="sk-test", webhook_secret=secret).webhooks
    sdk.verify_signature(PAYLOAD, sent)  # raises if the SDK refuses it
    ours = SignatureVerifier((secret,), lambda: now, TOLERANCE_SECONDS, raw_unprefixed=True)
    assert ours.verify(PAYLOAD, sent) == MSG_ID
    assert ours.verify(PAYLOAD + b" ", sent) is None
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(PAYLOAD + b" ", sent)
