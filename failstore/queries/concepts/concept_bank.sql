-- name: concept_bank
-- description: The concept bank: for each target model and tag source, the concepts of the
-- description: latest `failstore concepts` run (or ConceptBank.fit), kept and dropped, with the
-- description: CAV (unit direction, bias), example counts and held-out accuracy; kept first.
-- description: run_id links to analysis_runs. See docs/concepts.md.
-- param: model = NULL -- only this target model
-- param: kept = NULL -- true: only kept concepts
SELECT b.*
FROM concept_cavs AS b
WHERE b.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'concepts'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR b.model = $model)
    AND ($kept IS NULL OR b.kept = CAST($kept AS BOOLEAN))
ORDER BY b.model, b.tag_source, b.kept DESC, b.val_accuracy DESC NULLS LAST, b.concept
