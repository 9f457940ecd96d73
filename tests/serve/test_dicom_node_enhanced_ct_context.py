"""A C-STORE's data set must be of the class of the presentation context it comes on, against a
real pynetdicom peer that sends a CT Image on a context proposed for Enhanced CT (pynetdicom
does not check the two agree, as a hostile or broken peer need not).

The larger per-message bound of an Enhanced CT (the volume limit) held for any data set sent on
such a context: a CT Image of more than one image's bytes was read whole, and a CT Image sent
there was stored. The bound now needs the command set's Affected SOP Class too, and the node
answers a data set of another class than its context's 0xA900.
"""

from __future__ import annotations

import logging
import time
from io import BytesIO

import numpy as np
import pytest

from tests.enhanced_ct import ENHANCED_CT, read_slices
from tests.serve.test_dicom_node import SERIES
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _send_on_enhanced_context(port: int, ds, affected: str):
    """Associate proposing Enhanced CT alone and send ``ds`` (Explicit VR Little Endian) on that
    context as a C-STORE naming ``affected``: the response's status, or None if the association
    was aborted."""
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode
    from pydicom.uid import ExplicitVRLittleEndian

    ae = AE()
    ae.add_requested_context(ENHANCED_CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESEG")
    assert assoc.is_established
    try:
        [context] = assoc.accepted_contexts
        request = C_STORE()
        request.MessageID, request.Priority = 1, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = affected, ds.SOPInstanceUID
        request.DataSet = BytesIO(encode(ds, False, True))
        assoc._reactor_checkpoint.clear()  # as send_c_store does: the reply is this call's, not the reactor's
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        return None if response is None or assoc.is_aborted else int(response.Status)
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.parametrize("affected", [CT_IMAGE, ENHANCED_CT])
def test_a_ct_image_sent_on_an_enhanced_ct_context_is_refused(running_node, caplog, affected):
    """A CT Image on a context for Enhanced CT, its command naming either class: 0xA900, one log
    line, nothing stored (it was stored, and answered Success)."""
    [ds] = read_slices(SERIES)[:1]
    caplog.set_level(logging.WARNING, logger="edgeseg")
    with running_node(idle=3600) as node:
        status = _send_on_enhanced_context(node.port, ds, affected)
        stored = list(node.work.rglob("*.dcm"))
    assert status == 0xA900 and stored == [] and node.stats.received == 0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edgeseg") and "context" in r.getMessage()]
    if affected == CT_IMAGE:  # the command names another class than the context's: its data set is not read
        assert lines == [f"refused an image sent as {CT_IMAGE} on a presentation context for {ENHANCED_CT}; "
                         "its data set is not read"], caplog.text
    else:
        assert lines == [f"refused image {ds.SOPInstanceUID} of series {ds.SeriesInstanceUID}: its SOP Class UID "
                         f"{CT_IMAGE} is not its context's ({ENHANCED_CT})"], caplog.text


def test_a_ct_image_on_an_enhanced_ct_context_has_the_one_image_bound(running_node, caplog, monkeypatch):
    """With the pixel limit lowered to 64x64 the one-image bound is 32 KiB + 4 MiB; a CT Image of
    1536x1536 (4.7 MB) sent on a context for Enhanced CT, its command naming CT Image, has its
    association aborted as it comes (it was read whole under the volume limit's bound, 2 GiB)."""
    from edgeseg.limits import current_limits
    from edgeseg.serve.dicom_peer_bound import data_set_limit

    monkeypatch.setenv("EDGESEG_MAX_PIXELS", str(64 * 64))
    [ds] = read_slices(SERIES)[:1]
    ds.Rows = ds.Columns = 1536
    ds.PixelData = np.zeros((1536, 1536), dtype=np.int16).tobytes()
    caplog.set_level(logging.WARNING, logger="edgeseg")
    with running_node(idle=3600) as node:
        status = _send_on_enhanced_context(node.port, ds, CT_IMAGE)
        stored = list(node.work.rglob("*.dcm"))
    bound = data_set_limit(current_limits())
    assert bound < 1536 * 1536 * 2
    assert status is None and stored == [] and node.stats.received == 0
    assert f"a data set of over {bound} bytes" in caplog.text, caplog.text
