-- CT-FM pretraining selection: OFFLINE APPROXIMATION on the bundled `index` table alone (no network needed).
--
-- The exact CT-FM selection is ctfm_pretraining.sql; it needs slice thickness, slice positions and
-- image type, which live in idc-index's ct_index and volume_geometry_index tables (fetched from the network).
-- This file keeps what the bundled index can check (the first three are ct_series, see ctfm/idc/query.py):
--   * CT Image Storage (SOPClassUID 1.2.840.10008.5.1.4.1.1.2) in Modality CT: drops Secondary Capture, Raw Data
--   * original data, not an analysis result
--   * more than $min_instances instances, as in the paper; this also drops scouts (1-3 instances)
--   * first released in IDC v$max_idc_version or earlier (the paper used IDC v14)
-- It cannot check slice thickness (1-5 mm), duplicated slice positions or LOCALIZER image types; `ctfm idc convert`
-- rejects series with duplicated or missing slices, mixed spacing or localizers when it converts them.
-- On IDC v25 (idc-index-data 25.0.5): 154,840 series, 82,252 studies, 33,176 patients, 66 collections, 14.1 TB.
-- The paper (IDC v14, exact filters): 148,394 series from 69 collections.
--
-- $min_instances = 50: keep series with more instances than this
-- $max_idc_version = 14: keep series first released in this IDC version or earlier
SELECT *
FROM ct_series($min_instances)
WHERE series_init_idc_version <= $max_idc_version::BIGINT
ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID
