-- A reproducible random subset of $n series from the offline CT-FM pretraining selection
-- (ctfm_pretraining_offline.sql: CT Image Storage, original data, more than $min_instances instances,
-- first released in IDC v$max_idc_version or earlier). Series are ordered by md5(SeriesInstanceUID, seed), so the
-- same seed gives the same series on any machine and DuckDB version, and a larger $n extends a smaller one.
-- Runs on the bundled `index` table (offline).
--
-- $n: number of series to pick
-- $seed = 0: any text or number; another seed gives another subset
-- $min_instances = 50: keep series with more instances than this
-- $max_idc_version = 14: keep series first released in this IDC version or earlier
SELECT *
FROM ct_series($min_instances)
WHERE series_init_idc_version <= $max_idc_version::BIGINT
ORDER BY md5(SeriesInstanceUID || ':' || $seed::VARCHAR)
LIMIT $n::BIGINT
