-- CT volumes of one body part, by the DICOM BodyPartExamined tag (as the sites wrote it: CHEST, ABDOMEN, HEAD,
-- CHESTABDPELVIS, LSPINE, ...; about 24,000 CT series leave it empty and are never selected here). From ct_series:
-- CT Image Storage series with more than $min_instances instances, original data only (see ctfm/idc/query.py).
-- Runs on the bundled `index` table (offline).
--
-- $body_part: BodyPartExamined value, compared without regard to case, e.g. abdomen
-- $min_instances = 50: keep series with more instances than this
SELECT *
FROM ct_series($min_instances)
WHERE upper(BodyPartExamined) = upper($body_part)
ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
