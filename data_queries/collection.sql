-- CT volumes of one IDC collection: CT Image Storage series with more than $min_instances instances, original
-- data only (no analysis results). Runs on the bundled `index` table (offline).
-- Collection ids are lower case, as in IDC (e.g. nlst, lidc_idri, tcga_luad, covid_19_ny_sbu); list them with
--   SELECT collection_id, count(*) FROM "index" WHERE Modality = 'CT' GROUP BY ALL ORDER BY 2 DESC
--
-- $collection_id: the IDC collection id, e.g. lidc_idri
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
    AND collection_id = lower($collection_id)
ORDER BY PatientID, StudyInstanceUID, SeriesInstanceUID
