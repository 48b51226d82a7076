"""The Windows DACL rules for secrets, judged on DACLs as Windows reports them (tests/wine sets
and reads real ones under Wine)."""

from __future__ import annotations

import pytest

from agent.core import acl

SYSTEM = acl.Grant(acl.SYSTEM, "NT AUTHORITY\\SYSTEM", acl.FILE_ALL_ACCESS)
ADMINS = acl.Grant(acl.ADMINISTRATORS, "BUILTIN\\Administrators", acl.FILE_ALL_ACCESS)
USERS = acl.Grant("S-1-5-32-545", "BUILTIN\\Users", 0x1200A9)  # read and execute
EVERYONE = acl.Grant(acl.EVERYONE, "Everyone", 0x1200A9)


@pytest.mark.parametrize(
    ("dacl", "folder", "found"),
    [
        (acl.Dacl(True, (SYSTEM, ADMINS)), True, []),
        (acl.Dacl(False, (SYSTEM, ADMINS)), False, []),  # a file inherits its folder's
        (acl.Dacl(False, (SYSTEM, ADMINS)), True, ["inherits its parent folder's permissions"]),
        (
            acl.Dacl(False, (SYSTEM, ADMINS, USERS, EVERYONE)),
            True,
            [
                "inherits its parent folder's permissions",
                "open to BUILTIN\\Users, Everyone",
            ],
        ),
        (acl.Dacl(True, (SYSTEM, acl.Grant(acl.EVERYONE, "Everyone", 0))), True, []),
    ],
)
def test_only_system_and_administrators_may_open_a_secret(dacl, folder, found):
    assert acl.problems(dacl, folder=folder) == found
