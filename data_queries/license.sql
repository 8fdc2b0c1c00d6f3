-- CT volumes under one class of licence, matched with SQL LIKE on license_short_name. The default 'CC BY %' keeps
-- CC BY 3.0 and CC BY 4.0 (commercial use allowed, attribution required) and leaves out the CC BY-NC collections;
-- 'CC BY-NC %' selects only the non-commercial ones, '%' everything. CT Image Storage series with more than
-- $min_instances instances, original data only. Runs on the bundled `index` table (offline).
--
-- $license = 'CC BY %': LIKE pattern on license_short_name
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
    AND license_short_name LIKE $license
ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
