"""A real S3-compatible server on 127.0.0.1 (moto in server mode) holding an IDC-like bucket, for download tests.

Objects are stored as IDC stores them, ``<bucket>/<crdc_series_uuid>/<name>.dcm``, and uploaded public-read
because s5cmd downloads with ``--no-sign-request`` (unsigned GETs of private objects get 403).
"""

from __future__ import annotations

import uuid
from pathlib import Path

IDC_BUCKET = "idc-open-data"


class LocalS3:
    """moto's threaded server plus a boto3 client to fill it; use as a context manager."""

    def __init__(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=IDC_BUCKET)

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def put_series(self, folder: Path, *, series_uuid: str | None = None) -> tuple[str, int]:
        """Upload a DICOM series folder under ``series_uuid`` (default: a fresh one), as IDC names its objects.

        Returns the uuid and the number of files uploaded.
        """
        series_uuid = series_uuid or str(uuid.uuid4())
        files = sorted(folder.glob("*.dcm"))
        for path in files:
            self.client.put_object(
                Bucket=IDC_BUCKET, Key=f"{series_uuid}/{uuid.uuid4()}.dcm", Body=path.read_bytes(), ACL="public-read"
            )
        return series_uuid, len(files)


def selection_row(
    series_uuid: str, folder: Path, *, instance_count: int, collection_id: str = "test_collection"
) -> dict:
    """The selection row (as ``ctfm idc query`` writes it) of a series written by ``write_dicom_series``."""
    import pydicom

    first = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    size_mb = sum(path.stat().st_size for path in folder.glob("*.dcm")) / 1e6
    return {
        "SeriesInstanceUID": str(first.SeriesInstanceUID),
        "StudyInstanceUID": str(first.StudyInstanceUID),
        "PatientID": str(first.PatientID),
        "collection_id": collection_id,
        "crdc_series_uuid": series_uuid,
        "aws_bucket": IDC_BUCKET,
        "instanceCount": instance_count,
        "series_size_MB": size_mb,
        "Modality": "CT",
    }
