"""API keys: SHA-256 digests in a YAML file, found in constant time, their scope parsed strictly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.auth.api_keys import ApiKeys
from app.auth.errors import AuthConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    return path


def test_key_is_found_by_its_digest_with_its_scope(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret-key").hexdigest()
    keys = ApiKeys.from_file(write(tmp_path, f"keys:\n  - name: billing\n    sha256: {digest}\n"
                                             "    scope: publish:billing.* subscribe:billing.*\n"))
    found = keys.find("s3cret-key")
    assert found is not None and found.name == "billing" and found.scopes.publish == ("billing.*",)
    assert keys.find("other") is None


@pytest.mark.parametrize(("text", "message"), [
    ("keys: 3", "must hold a list"),
    ("- name: a\n  sha256: abc\n", "64 hex digits"),
    (f"- name: a\n  sha256: {'a0' * 32}\n  scope: read\n", "unknown scope entry"),
    (f"- name: a\n  sha256: {'a0' * 32}\n- name: a\n  sha256: {'b1' * 32}\n", "used twice"),
    (f"- sha256: {'a0' * 32}\n", "needs a name"),
])
def test_bad_file_names_the_entry_at_fault(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        ApiKeys.from_file(write(tmp_path, text))
