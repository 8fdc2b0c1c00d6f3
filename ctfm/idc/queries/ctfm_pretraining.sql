-- CT-FM pretraining selection: the EXACT filters of the paper, for when ct_index and volume_geometry_index exist.
--
-- Those two tables are not bundled with idc-index-data: idc-index fetches them from the network on first use and
-- caches them (`ctfm idc query` does this for you), or pass your own copies with `--table NAME=FILE.parquet`.
-- Offline, use data_queries/ctfm_pretraining_offline.sql, an approximation on the bundled `index` table alone.
--
-- The paper's selection (IDC v14, BigQuery dicom_all; 148,394 series from 69 collections, NLST 86%):
--   * Modality CT, CT Image Storage, original data (not an analysis result): ct_series, see ctfm/idc/query.py
--   * slice thickness from $min_thickness_mm to $max_thickness_mm mm (ct_index keeps one representative
--     SliceThickness per series; the paper bounded the minimum and maximum over the instances)
--   * more than $min_instances instances
--   * exactly one instance per slice position (volume_geometry_index.unique_slice_positions)
--   * no LOCALIZER in ImageType
--   * first released in IDC v$max_idc_version or earlier
--
-- $min_thickness_mm = 1: thinnest slice thickness kept, in mm
-- $max_thickness_mm = 5: thickest slice thickness kept, in mm
-- $min_instances = 50: keep series with more instances than this
-- $max_idc_version = 14: keep series first released in this IDC version or earlier
SELECT i.*, ct.SliceThickness, g.slice_spacing_mm
FROM ct_series($min_instances) AS i
JOIN ct_index AS ct ON ct.SeriesInstanceUID = i.SeriesInstanceUID
JOIN volume_geometry_index AS g ON g.SeriesInstanceUID = i.SeriesInstanceUID
WHERE i.series_init_idc_version <= $max_idc_version::BIGINT
    AND ct.SliceThickness BETWEEN $min_thickness_mm::DOUBLE AND $max_thickness_mm::DOUBLE
    AND g.unique_slice_positions
    AND NOT coalesce(list_contains(ct.ImageType, 'LOCALIZER'), false)
ORDER BY i.collection_id, i.PatientID, i.StudyInstanceUID, i.SeriesInstanceUID
