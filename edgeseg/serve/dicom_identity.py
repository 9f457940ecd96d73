"""How the DICOM node names itself in every association it takes or opens: its Implementation
Class UID and Implementation Version Name (PS3.7 D.3.3.2, PS3.8 Annex D).

pynetdicom sends its own (``1.2.826.0.1.3680043.9.3811.<its version>``, ``PYNETDICOM_304``) unless
told otherwise, so a PACS log, a network trace or a conformance check saw the library and its
version, never which edgeseg answered or sent the SEG. docs/dicom-conformance.md states both.
"""

from __future__ import annotations

import hashlib

from edgeseg import __version__

# A UUID-derived UID (PS3.5 B.2: the root 2.25 followed by the UUID as one integer), made once
# for edgeseg's DICOM node and never changed: the version name below tells the versions apart.
IMPLEMENTATION_CLASS_UID = "2.25.189037828738853651367658522522687355168"
VERSION_NAME_PREFIX = "EDGESEG_"
SHORT_PREFIX = "ES_"  # where the release does not fit after the long one
# PS3.8 D.3.3.2.3 and pynetdicom's check: 1 to 16 characters of the default repertoire, no backslash
VERSION_NAME_LENGTH = 16


def implementation_version_name(version: str = __version__) -> str:
    """``EDGESEG_`` and edgeseg's release (``EDGESEG_0.1.0``), held to the 16 characters of the
    default repertoire the name may have: a local part (``+g1a2b3c``) is dropped and a character
    outside the repertoire or a backslash becomes ``_``. A release too long for ``EDGESEG_``
    follows ``ES_`` instead (``ES_12.10.3.dev45``); one too long for that too keeps its first 9
    characters, then ``~`` and 3 hex digits of a hash of it: a development or pre-release build
    never names itself as the release it leads to (cut, ``12.10.3.dev45`` was ``EDGESEG_12.10.3``),
    and ``~`` is in no release's name."""
    release = version.split("+", 1)[0]
    text = "".join(c if 32 < ord(c) < 127 and c != "\\" else "_" for c in release)
    for prefix in (VERSION_NAME_PREFIX, SHORT_PREFIX):
        if len(prefix + text) <= VERSION_NAME_LENGTH:
            return prefix + text
    digest = hashlib.sha256(release.encode()).hexdigest()[:3]
    return f"{SHORT_PREFIX}{text[:VERSION_NAME_LENGTH - len(SHORT_PREFIX) - 4]}~{digest}"


def identify(ae) -> None:
    """Have the pynetdicom AE ``ae`` send edgeseg's Implementation Class UID and Version Name."""
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = implementation_version_name()
