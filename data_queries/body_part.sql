-- CT volumes of one body part, by the DICOM BodyPartExamined tag (as the sites wrote it: CHEST, ABDOMEN, HEAD,
-- CHESTABDPELVIS, LSPINE, ...; about 24,000 CT series leave it empty and are never selected here). CT Image Storage
-- series with more than $min_instances instances, original data only. Runs on the bundled `index` table (offline).
--
-- $body_part: BodyPartExamined value, compared without regard to case, e.g. abdomen
-- $min_instances = 50: keep series with more instances than this
SELECT
    SeriesInstanceUID,
    StudyInstanceUID,
    PatientID,
    collection_id,
    crdc_series_uuid,
    aws_bucket,
    instanceCount,
    series_size_MB,
    Modality,
    BodyPartExamined,
    license_short_name,
    series_init_idc_version
FROM "index"
WHERE Modality = 'CT'
    AND SOPClassUID = '1.2.840.10008.5.1.4.1.1.2'
    AND analysis_result_id IS NULL
    AND instanceCount > $min_instances::BIGINT
    AND upper(BodyPartExamined) = upper($body_part)
ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
