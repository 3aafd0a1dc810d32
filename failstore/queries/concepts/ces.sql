-- name: ces
-- description: Conceptual explanation scores of the latest `failstore explain` run (or
-- description: Explain.fit) per target model and concept bank: one row per (label ->
-- description: prediction set of mistakes, concept), score normalised per set, rank by |score|.
-- description: Per-image scores are in the table ces_images. See docs/concepts.md.
-- param: model = NULL -- only this target model
SELECT s.*
FROM ces_sets AS s
WHERE s.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'explain'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR s.model = $model)
ORDER BY s.label, s.prediction, s.rank
