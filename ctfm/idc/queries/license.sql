-- CT volumes under one class of licence, matched with SQL LIKE on license_short_name. The default 'CC BY %' keeps
-- CC BY 3.0 and CC BY 4.0 (commercial use allowed, attribution required) and leaves out the CC BY-NC collections;
-- 'CC BY-NC %' selects only the non-commercial ones, '%' everything. From ct_series: CT Image Storage series with
-- more than $min_instances instances, original data only (see ctfm/idc/query.py). Runs on the bundled `index` table
-- (offline).
--
-- $license = 'CC BY %': LIKE pattern on license_short_name
-- $min_instances = 50: keep series with more instances than this
SELECT *
FROM ct_series($min_instances)
WHERE license_short_name LIKE $license
ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
