-- name: slices
-- description: PRIME failure slices of the latest `failstore slices` run (or Slices.fit) for each
-- description: target model, grouping and tag source; one row per slice, most important first.
-- description: run_id links to analysis_runs (parameters, source versions). See docs/slices.md.
-- param: model = NULL -- only this target model
-- param: tag_source = NULL -- only this tag source: 'tags' (CLIP) or the --tags-from columns
SELECT s.*
FROM prime_slices AS s
WHERE s.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'slices'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR s.model = $model)
    AND ($tag_source IS NULL OR s.tag_source = $tag_source)
ORDER BY s.importance DESC, s.size DESC, s.class
