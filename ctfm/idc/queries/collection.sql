-- CT volumes of one IDC collection. From ct_series: CT Image Storage series with more than $min_instances
-- instances, original data only, no analysis results (see ctfm/idc/query.py). Runs on the bundled `index` table
-- (offline).
-- Collection ids are lower case, as in IDC (e.g. nlst, lidc_idri, tcga_luad, covid_19_ny_sbu); list them with
--   SELECT collection_id, count(*) FROM "index" WHERE Modality = 'CT' GROUP BY ALL ORDER BY 2 DESC
--
-- $collection_id: the IDC collection id, e.g. lidc_idri
-- $min_instances = 50: keep series with more instances than this
SELECT *
FROM ct_series($min_instances)
WHERE collection_id = lower($collection_id)
ORDER BY PatientID, StudyInstanceUID, SeriesInstanceUID
