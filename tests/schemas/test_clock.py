"""`schemas.clock.iso` writes times in UTC through orjson, and the SQLite ledger's times
through it: the texts must stay `isoformat()`'s, for every time, in UTC or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from schemas.clock import iso
from schemas.events import jsonable
from schemas.store.sqlite_ingest import _decode_when, _encode_when

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
# Far enough from years 1 and 9999 that every zone's time has a UTC one.
TIMES = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=ZONES)


@given(TIMES)
def test_iso_is_isoformat_in_every_zone(when: datetime) -> None:
    assert iso(when) == when.isoformat()


def test_equal_instants_in_other_zones_keep_their_own_offsets() -> None:
    in_utc = datetime(2026, 12, 7, 12, 0, 0, 5, tzinfo=UTC)
    in_paris = in_utc.astimezone(timezone(timedelta(hours=1)))
    assert in_utc == in_paris
    assert iso(in_utc) == "2026-12-07T12:00:00.000005+00:00"
    assert iso(in_paris) == "2026-12-07T13:00:00.000005+01:00"
    assert jsonable(in_paris) == "2026-12-07T13:00:00.000005+01:00"


@given(TIMES)
def test_a_stored_time_is_its_utc_time_to_the_microsecond(when: datetime) -> None:
    stored = _encode_when(when)
    assert stored == when.astimezone(UTC).isoformat(" ", "microseconds")[:26]
    assert _decode_when(stored) == when
