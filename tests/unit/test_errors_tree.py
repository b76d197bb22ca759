"""Every error cove raises on purpose is a CoveError with one meaning, and
the library logger stays silent unless a program configures logging."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from cove import errors
from cove.api.http.message import HttpError, parse_head
from cove.runtime.launch import LaunchError


@pytest.mark.parametrize(
    "cls",
    [
        errors.HttpError,
        errors.UpstreamFailed,
        errors.LaunchError,
        errors.DatapathRefused,
        errors.DatapathClosed,
        errors.DatapathGone,
    ],
)
def test_former_strays_are_in_the_tree_with_a_kind_of_their_own(cls: type) -> None:
    assert issubclass(cls, errors.CoveError)
    assert [c for c in _tree(errors.CoveError) if c.kind == cls.kind] == [cls]


def _tree(root: type[errors.CoveError]) -> list[type[errors.CoveError]]:
    out = [root]
    for sub in root.__subclasses__():
        out.extend(_tree(sub))
    return out


def test_every_kind_names_one_class() -> None:
    kinds = [c.kind for c in _tree(errors.CoveError) if c.__module__ == "cove.errors"]
    assert len(kinds) == len(set(kinds))


def test_datapath_kinds_answer_as_datapath_errors_and_come_back_from_json() -> None:
    for cls in (errors.DatapathRefused, errors.DatapathClosed, errors.DatapathGone):
        exc = cls("no")
        assert isinstance(exc, errors.DatapathError)
        assert (exc.http_status, exc.exit_code) == (500, 10)
        back = errors.from_json(exc.to_json())
        assert type(back) is cls and back.message == "no"


def test_http_error_carries_its_status_as_the_http_status() -> None:
    with pytest.raises(HttpError) as err:
        parse_head(b"GARBAGE\r\n\r\n")
    assert isinstance(err.value, errors.CoveError)
    assert err.value.http_status == err.value.status == 400


def test_launch_error_is_the_one_in_the_tree() -> None:
    assert LaunchError is errors.LaunchError
    assert LaunchError("x", missing=True).missing


def test_importing_cove_configures_no_handler_and_stays_silent() -> None:
    code = (
        "import logging, cove.agent.daemon\n"
        "assert logging.getLogger().handlers == []\n"
        "hs = logging.getLogger('cove').handlers\n"
        "assert any(isinstance(h, logging.NullHandler) for h in hs)\n"
        "logging.getLogger('cove.test').warning('should not show')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "should not show" not in proc.stderr


def test_the_library_logger_has_a_null_handler() -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("cove").handlers)


def test_a_vanished_link_is_gone_not_refused() -> None:
    import ipaddress

    from cove.datapath.fake import FakeDatapath
    from cove.errors import DatapathError, DatapathGone

    dp = FakeDatapath()
    with pytest.raises(DatapathGone) as caught:
        dp.add_address("cv-nothere", ipaddress.ip_interface("10.9.0.1/24"))
    assert isinstance(caught.value, DatapathError)  # callers of the old name still catch it
    assert caught.value.kind == "datapath_gone"
