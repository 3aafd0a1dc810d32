-- name: slices
-- description: PRIME failure slices of the latest `failstore slices` run (or Slices.fit), one row
-- description: per slice, most important first. Columns: see docs/slices.md.
SELECT s.* EXCLUDE (run_id)
FROM prime_slices AS s
WHERE s.run_id = (
    SELECT r.run_id FROM analysis_runs AS r
    WHERE r.analysis = 'slices'
    ORDER BY r.used_at DESC
    LIMIT 1
)
ORDER BY s.importance DESC, s.size DESC
