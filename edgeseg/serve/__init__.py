"""Server-side deployment: the KServe v2 HTTP server and the DICOM node.

FastAPI, uvicorn, prometheus-client (``edgeseg[serve]``) and pynetdicom (``edgeseg[dicom]``)
are imported only when a server starts.
"""
