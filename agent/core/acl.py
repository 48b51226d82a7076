"""Who may open the till's secrets on Windows: SYSTEM and Administrators only, set and read back.

On Windows `chmod` changes nothing but the read-only flag, so the config, credentials and data
folders (and each secret file) get their own DACL instead: full control for SYSTEM (the
service) and Administrators (the technician), inheritance from C:\\ProgramData removed. The
calls are the Win32 security API's (pywin32's win32security); SetFileSecurity rather than
SetNamedSecurityInfo, because Wine (where CI runs this) keeps only what the former sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"
ALLOWED = (SYSTEM, ADMINISTRATORS)
EVERYONE = "S-1-1-0"
ACCESS_ALLOWED_ACE_TYPE = 0
FILE_ALL_ACCESS = 0x1F01FF
INHERITED_BY_FILES_AND_FOLDERS = 0x1 | 0x2  # OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE
SE_DACL_PROTECTED = 0x1000


@dataclass(frozen=True)
class Grant:
    """One access-allowed entry: whom (SID and name) and the access mask."""

    sid: str
    name: str
    mask: int


@dataclass(frozen=True)
class Dacl:
    """A file's or folder's DACL as read back: protected (inheritance removed) and its grants."""

    protected: bool
    grants: tuple[Grant, ...]


def problems(dacl: Dacl, *, folder: bool) -> list[str]:
    """What lets anyone but SYSTEM and Administrators in; [] when nothing does. A folder must
    not inherit (C:\\ProgramData lets every user read); a file in it inherits the folder's."""
    found = []
    if folder and not dacl.protected:
        found.append("inherits its parent folder's permissions")
    others = sorted({g.name for g in dacl.grants if g.sid not in ALLOWED and g.mask})
    if others:
        found.append("open to " + ", ".join(others))
    return found


def describe(path: Path, *, folder: bool) -> tuple[bool, str]:
    """(ok, the words for it) for a folder or file that only SYSTEM and Administrators may open."""
    found = problems(read(path), folder=folder)
    if found:
        return False, f"{path} {'; '.join(found)} (must be SYSTEM and Administrators only)"
    return True, f"{path} SYSTEM and Administrators only"


def restrict(path: Path) -> None:
    """Full control for SYSTEM and Administrators, nobody else, nothing inherited (Windows).

    A folder's entries are inherited by what is created in it later."""
    import ntsecuritycon
    import win32security

    inherit = INHERITED_BY_FILES_AND_FOLDERS if path.is_dir() else 0
    dacl = win32security.ACL()
    for sid in ALLOWED:
        dacl.AddAccessAllowedAceEx(
            win32security.ACL_REVISION_DS,
            inherit,
            ntsecuritycon.FILE_ALL_ACCESS,
            win32security.ConvertStringSidToSid(sid),
        )
    descriptor = win32security.SECURITY_DESCRIPTOR()
    descriptor.SetSecurityDescriptorDacl(True, dacl, False)
    descriptor.SetSecurityDescriptorControl(SE_DACL_PROTECTED, SE_DACL_PROTECTED)
    win32security.SetFileSecurity(str(path), win32security.DACL_SECURITY_INFORMATION, descriptor)


def read(path: Path) -> Dacl:
    """The DACL of path as Windows reports it (Windows)."""
    import win32security

    descriptor = win32security.GetFileSecurity(str(path), win32security.DACL_SECURITY_INFORMATION)
    control, _revision = descriptor.GetSecurityDescriptorControl()
    dacl = descriptor.GetSecurityDescriptorDacl()
    if dacl is None:  # no DACL at all: everyone has full control
        return Dacl(False, (Grant(EVERYONE, "Everyone (no DACL)", FILE_ALL_ACCESS),))
    grants = []
    for index in range(dacl.GetAceCount()):
        (kind, _flags), mask, sid = dacl.GetAce(index)
        if kind == ACCESS_ALLOWED_ACE_TYPE:
            text = win32security.ConvertSidToStringSid(sid)
            grants.append(Grant(text, _name(sid, text), mask))
    return Dacl(bool(control & SE_DACL_PROTECTED), tuple(grants))


def _name(sid: object, text: str) -> str:
    import win32security

    try:
        name, domain, _kind = win32security.LookupAccountSid(None, sid)
    except win32security.error:
        return text
    return f"{domain}\\{name}" if domain else str(name)
